"""The Ray engine (`enrich --engine ray`) on a local Ray cluster: the same rows and values as the
local engine, every key exactly once after a worker or the driver is SIGKILLed mid-run, and each
Dremio partition's key range pushed down to Dremio."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import ray

sys.path.insert(0, str(Path(__file__).parent))
from dremio_standin import DremioStandin  # noqa: E402
from enrichment import CHUNK, SENTIMENT_REF, check_whole_chunks, kill_after_commits, make_reviews  # noqa: E402

from flight_lstm.enrich import Job, JobError, run  # noqa: E402
from flight_lstm.plan.increment import build  # noqa: E402
from flight_lstm.plan.parse import parse_one_query  # noqa: E402
from flight_lstm.enrich.ray_engine import chunk_sql  # noqa: E402
from flight_lstm.sinks import open_sink  # noqa: E402
from udfs import OPERATORS  # noqa: E402

PASSWORD = "s3cret-Pa55word"
BOTH = ("SELECT id, review, sentiment(review) AS sentiment, "
        "forecast([id::DOUBLE, id + 2.0, id * 0.5, 7.0, id % 5], 3) AS next_3 FROM reviews")
# Long texts make a chunk take a good part of a second, so a kill lands while chunks are in flight.
LONG = " ".join(["the film was good but far too long , and the acting was dull"] * 100)
ROWS = 160  # ten chunks of CHUNK
SCORES = "SELECT id, sentiment(review) AS sentiment FROM reviews"


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module. Its workers inherit this environment at start."""
    before = os.environ.get("DREMIO_PASSWORD")
    os.environ["DREMIO_PASSWORD"] = PASSWORD
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    if before is None:
        del os.environ["DREMIO_PASSWORD"]
    else:
        os.environ["DREMIO_PASSWORD"] = before


def job(source: str, into: str, sql: str = BOTH, chunk_rows: int = 25, **options) -> Job:
    return Job.from_options("t", {"source": source, "sql": sql, "key": "id", "into": into,
                                  "chunk_rows": chunk_rows, **options})


def rows_of(into: str) -> pa.Table:
    sink = open_sink(into, source_uri="")
    return sink.read(sink.schema().names).sort_by("id")


def long_reviews(path: Path) -> str:
    with duckdb.connect(str(path)) as con:
        con.execute(f"CREATE TABLE reviews AS SELECT i::BIGINT AS id, '{LONG} ' || i AS review FROM range({ROWS}) t(i)")
    return f"duckdb://{path}"


def scorer_pids() -> list[int]:
    """This test's Ray Data actors scoring chunks: their process titles name the scorer class, and
    they descend from this process (through the raylet it started)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"MapBatches(_Scorer)" in cmdline.read_bytes() and _descends_from_us(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _descends_from_us(pid: int) -> bool:
    while pid > 1:
        if pid == os.getpid():
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


def test_ray_writes_the_same_rows_and_values_as_the_local_engine(cluster, tmp_path):
    lake = make_reviews(tmp_path / "lake.db")
    (tmp_path / "wh").mkdir()
    local, distributed = f"parquet://{tmp_path}/local", f"iceberg://{tmp_path}/wh/lake.scored"
    assert run(job(lake, local)).written == 60
    summary = run(job(lake, distributed, engine="ray", ray_workers=2))
    assert (summary.read, summary.scored, summary.written, summary.chunks) == (60, 60, 60, 3)
    a, b = rows_of(local), rows_of(distributed)
    assert a.column("id").to_pylist() == b.column("id").to_pylist() == list(range(60))
    assert a.column("review").equals(b.column("review"))
    assert set(b.column("_model").to_pylist()) == set(a.column("_model").to_pylist())
    assert SENTIMENT_REF in b.column("_model")[0].as_py()
    x, y = (np.array(t.column("sentiment").to_pylist(), dtype=float) for t in (a, b))
    assert np.array_equal(np.isnan(x), np.isnan(y)) and np.nanmax(abs(x - y)) < 1e-5
    # float32 models on one thread (a Ray actor) against two (here): equal to 1e-5, relative.
    x, y = (np.array(t.column("next_3").to_pylist(), dtype=float) for t in (a, b))
    assert x.shape == y.shape == (60, 3) and np.max(abs(x - y) / np.maximum(1, abs(x))) < 1e-5
    assert run(job(lake, distributed, engine="ray")).written == 0  # incremental, as the local engine


def test_a_killed_worker_chunk_is_scored_again_and_written_once(cluster, tmp_path):
    lake = long_reviews(tmp_path / "lake.db")
    into = f"parquet://{tmp_path}/scored"
    results: list = []
    runner = threading.Thread(target=lambda: results.append(
        run(job(lake, into, SCORES, CHUNK, engine="ray", ray_workers=2))))
    runner.start()
    while not list((tmp_path / "scored").glob("*.parquet")) and runner.is_alive():
        time.sleep(0.02)
    victims = scorer_pids()
    assert victims, "no scoring actor to kill"
    os.kill(victims[0], signal.SIGKILL)
    at_kill = check_whole_chunks(lake, into)
    runner.join(300)
    assert at_kill < ROWS, "the run finished before the kill"
    assert results and results[0].written == ROWS and check_whole_chunks(lake, into) == ROWS
    assert rows_of(into).column("id").to_pylist() == list(range(ROWS))


def test_a_killed_driver_leaves_whole_chunks_and_the_rerun_writes_each_key_once(cluster, tmp_path):
    lake = long_reviews(tmp_path / "lake.db")
    into = f"parquet://{tmp_path}/scored"
    driver = subprocess.Popen(
        [sys.executable, "-m", "flight_lstm.cli", "enrich", "--source", lake, "--sql", SCORES, "--key", "id",
         "--into", into, "--chunk-rows", str(CHUNK), "--engine", "ray", "--ray-address", cluster,
         "--ray-workers", "2"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert kill_after_commits(driver, 1, 0.0), "the driver finished before the kill"
    written = check_whole_chunks(lake, into)
    assert 0 < written < ROWS
    again = run(job(lake, into, SCORES, CHUNK, engine="ray", ray_workers=2))
    assert again.written == ROWS - written and again.skipped == written
    assert check_whole_chunks(lake, into) == ROWS
    assert not list((tmp_path / "scored").glob(".pending-*"))


def test_each_dremio_partition_pushes_its_key_range_down(cluster, tmp_path):
    make_reviews(tmp_path / "lake.db")
    con = duckdb.connect(str(tmp_path / "lake.db"))
    standin = DremioStandin(con, {"space.folder.reviews": "reviews"}, users={"alice": PASSWORD}).start()
    try:
        sql = "SELECT id, review, sentiment(review) AS sentiment FROM space.folder.reviews"
        into = f"parquet://{tmp_path}/scored"
        source = f"dremio://alice@127.0.0.1:{standin.port}"
        assert run(job(source, into, sql, engine="ray", ray_workers=2)).written == 60
        scans = [s for s in standin.sql if "space.folder.reviews" in s and "BETWEEN" in s]
        ranges = sorted(tuple(map(int, re.search(r"BETWEEN (\d+) AND (\d+)", s).groups())) for s in scans)
        assert ranges == [(0, 24), (25, 49), (50, 59)], standin.sql
        assert all("sentiment" not in s.lower() for s in scans)  # the operator ran here, not in Dremio
        assert rows_of(into).column("id").to_pylist() == list(range(60))
    finally:
        standin.stop()
        con.close()


def test_chunk_ranges_are_plain_conditions_on_the_key_expressions():
    sql = "SELECT id AS rid, day, name, x, sentiment(review) AS s FROM t"
    increment = build(parse_one_query(sql), ("rid", "day", "name", "x"), OPERATORS)
    chunk = pa.table({"rid": pa.array([3, None, 9], pa.int64()),
                      "day": [datetime(2026, 1, 2), None, datetime(2026, 3, 4)],
                      "name": ["it's", "b", "a"], "x": [0.5, 1.5, 2.5]})
    narrowed = chunk_sql(increment, chunk, ("rid", "day", "name", "x"))
    assert "((id) BETWEEN 3 AND 9 OR (id) IS NULL)" in narrowed
    assert ("(day) BETWEEN CAST('2026-01-02 00:00:00' AS TIMESTAMP) AND CAST('2026-03-04 00:00:00' AS TIMESTAMP)"
            in narrowed)
    assert "(name) BETWEEN 'a' AND 'it''s'" in narrowed
    assert "(x) BETWEEN" not in narrowed  # floats: no range, the exact key filter alone
    assert chunk_sql(increment, chunk.set_column(0, "rid", pa.array([None] * 3, pa.int64())),
                     ("rid", "day", "name", "x")).count("(id) IS NULL") == 1


def test_ray_options_are_checked_before_anything_runs(tmp_path):
    lake = make_reviews(tmp_path / "lake.db")
    with pytest.raises(JobError, match="engine must be one of local, ray"):
        job(lake, "t", engine="spark")
    with pytest.raises(JobError, match="need engine ray"):
        job(lake, "t", ray_workers=2)
    with pytest.raises(JobError, match="cannot write a table inside the source's DuckDB file"):
        run(job(lake, "reviews_scored", engine="ray"))
    assert open_sink("reviews_scored", source_uri=lake).schema() is None
