"""Helpers the enrichment tests share (not a test module): a reviews table in a DuckDB file made by
the test, a job over it, the rows a target holds, and what a real `flight-lstm enrich` process
killed after some commits leaves. The fixtures built on them (`reviews_lake`, `calls`) are in
conftest.py."""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
from collections import Counter

import duckdb
import pyarrow as pa

from flight_lstm.enrich import Job
from flight_lstm.sinks import open_sink
from udfs.base import registry

SENTIMENT_REF = registry().resolve("sentiment").ref  # lineage names the model that scored

sentiment_module = importlib.import_module("udfs.sentiment")  # the package re-exports a function of that name

WORDS = ["a moving , beautifully acted film .", "dull , lifeless and far too long .", "It isn't good at all.",
         "one of the best films of the year", None, "terrible script , awful acting"]
SQL = "SELECT id, review, updated_at, sentiment(review) AS sentiment FROM reviews"
CHUNK = 16  # the chunk size of the kill tests' runs (`check_whole_chunks`)


def make_reviews(path, n: int = 60) -> str:
    with duckdb.connect(str(path)) as con:
        con.execute(f"""CREATE TABLE reviews AS SELECT i::BIGINT AS id, (i % 3)::INTEGER AS part,
            ['{WORDS[0]}', '{WORDS[1]}', 'It isn''t good at all.', '{WORDS[3]}', NULL, '{WORDS[5]}'][i % 6 + 1] AS review,
            TIMESTAMP '2026-01-01' AS updated_at FROM range({n}) t(i)""")
    return f"duckdb://{path}"


def job(lake, into="reviews_scored", **options) -> Job:
    return Job.from_options("t", {"source": lake, "sql": SQL, "key": "id", "into": into, "chunk_rows": 25, **options})


def target_rows(lake, into="reviews_scored") -> pa.Table:
    sink = open_sink(into, source_uri=lake)
    return sink.read(list(sink.schema().names)).sort_by("id")


def source_sql(lake, sql: str) -> None:
    with duckdb.connect(lake.removeprefix("duckdb://")) as con:
        con.execute(sql)


def kill_after_commits(process: subprocess.Popen, commits: int, delay: float) -> bool:
    """SIGKILL once `commits` chunks were reported, `delay` s later; False if it finished first
    (its last lines of log are then kept as `process.last_lines`, for the test's message)."""
    seen, process.last_lines = 0, []
    for line in process.stderr:
        process.last_lines = [*process.last_lines[-4:], line.strip()]
        seen += "written=" in line
        if seen >= commits:
            try:
                process.wait(delay)
                return False
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return True
    process.wait()
    return False


def check_whole_chunks(lake: str, into: str) -> int:
    sink = open_sink(into, source_uri=lake)
    if sink.schema() is None:
        return 0
    rows = sink.read(["id", "_scored_at"])
    assert max(Counter(rows.column("id").to_pylist()).values()) == 1, "a key was written twice"
    sizes = Counter(rows.column("_scored_at").to_pylist()).values()
    assert all(s == CHUNK for s in sizes) or sorted(sizes)[1:] == [CHUNK] * (len(sizes) - 1), sizes
    return rows.num_rows
