"""Enrichment into a Dremio table, through the stand-in of Dremio's Flight endpoint (real Flight,
real DuckDB behind it): bounded CTAS/INSERT/DELETE statements, exact literals, exactly once
across kills between statements and real SIGKILLs of `flight-lstm enrich`."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import Counter
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dremio_fixtures import PASSWORD, env  # noqa: E402,F401  (env is a fixture)
from dremio_standin import DremioStandin  # noqa: E402
from enrichment import SENTIMENT_REF, kill_after_commits, make_reviews  # noqa: E402

import flight_lstm.sinks.dremio as dremio_sink  # noqa: E402
from flight_lstm.cli import main  # noqa: E402
from flight_lstm.enrich import Job, run  # noqa: E402
from flight_lstm.sinks import TargetError, open_sink  # noqa: E402

SQL = "SELECT id, review, updated_at, sentiment(review) AS sentiment FROM space.folder.reviews"
INTO = 'dremio:space.folder."scored reviews"'


@pytest.fixture
def standin(tmp_path, env):
    make_reviews(tmp_path / "lake.db")
    con = duckdb.connect(str(tmp_path / "lake.db"))
    s = DremioStandin(con, {"space.folder.reviews": "reviews"}, users={"alice": PASSWORD}).start()
    yield s
    s.stop()
    con.close()


def uri(port: int) -> str:
    return f"dremio://alice@127.0.0.1:{port}"


def job(standin, sql=SQL, key="id", **options) -> Job:
    return Job.from_options("t", {"source": uri(standin.port), "sql": sql, "key": key, "into": INTO,
                                  "chunk_rows": 25, **options})


def target(port: int, columns=None) -> pa.Table:
    sink = open_sink(INTO, source_uri=uri(port))
    return sink.read(columns or sink.schema().names)


def writes(standin) -> list[str]:
    return [s.split()[0] for s in standin.sql if s.startswith(("CREATE", "INSERT", "DELETE"))]


def test_first_run_writes_every_row_with_lineage_and_second_writes_nothing(standin, calls):
    first = run(job(standin))
    assert (first.read, first.scored, first.written, first.skipped, first.chunks) == (60, 60, 60, 0, 3)
    rows = target(standin.port).sort_by("id")
    assert rows.column("id").to_pylist() == list(range(60))
    assert set(rows.column("_model").to_pylist()) == {SENTIMENT_REF}
    assert rows.schema.field("_scored_at").type == pa.timestamp("us", tz="UTC")
    assert abs(rows.column("_scored_at")[0].as_py() - datetime.now(timezone.utc)).total_seconds() < 60
    assert rows.column("review")[2].as_py() == "It isn't good at all."
    assert rows.column("sentiment")[0].as_py() > 0.5 and rows.column("sentiment")[1].as_py() < -0.5
    assert sum(calls) == 60 and writes(standin) == ["CREATE", "INSERT", "INSERT"]
    assert not standin.calls_of("DoPut")

    calls.clear()
    second = run(job(standin))
    assert (second.read, second.scored, second.written, second.skipped) == (60, 0, 0, 60)
    assert calls == [] and len(writes(standin)) == 3
    assert target(standin.port, ["id"]).num_rows == 60


def test_composite_key(standin, calls):
    sql = "SELECT id AS review_id, part, sentiment_label(review) AS label FROM space.folder.reviews"
    assert run(job(standin, sql, "review_id,part", chunk_rows=40)).written == 60
    calls.clear()
    assert run(job(standin, sql, "review_id,part", chunk_rows=40)).written == 0 and calls == []
    keys = target(standin.port, ["review_id", "part"]).to_pylist()
    assert len(keys) == 60 and len({tuple(k.values()) for k in keys}) == 60


def test_a_kill_between_statements_leaves_whole_statements_and_rerun_writes_each_key_once(standin, monkeypatch):
    monkeypatch.setattr(dremio_sink, "STATEMENT_ROWS", 10)  # a chunk of 25 goes as 10 + 10 + 5
    real, sent = dremio_sink.DremioSink._write, []

    class Killed(BaseException):
        pass

    def dying(self, sql):
        sent.append(sql)
        if len(sent) == 5:  # chunk 2's second statement never reaches Dremio
            raise Killed()
        return real(self, sql)

    monkeypatch.setattr(dremio_sink.DremioSink, "_write", dying)
    with pytest.raises(Killed):
        run(job(standin))
    assert target(standin.port, ["id"]).num_rows == 35  # chunk 1 and the first statement of chunk 2
    monkeypatch.setattr(dremio_sink.DremioSink, "_write", real)
    assert run(job(standin)).written == 25
    ids = target(standin.port, ["id"]).column("id").to_pylist()
    assert sorted(ids) == list(range(60))
    # A statement that lands twice (sent again, or finished after its client died) adds nothing.
    again = standin.sql[[i for i, s in enumerate(standin.sql) if s.startswith("INSERT")][-1]]
    sink = open_sink(INTO, source_uri=uri(standin.port))
    assert sink.client.query(again).read_all().to_pylist() == [{"Records": 0}]
    assert target(standin.port, ["id"]).num_rows == 60


def test_watermark_rescores_by_delete_then_insert(standin, calls):
    run(job(standin, watermark="updated_at"))
    standin.con.execute("UPDATE reviews SET review = 'an awful , boring mess', updated_at = TIMESTAMP '2026-02-01' "
                        "WHERE id IN (0, 3, 30)")
    calls.clear()
    assert run(job(standin, watermark="updated_at")).written == 3 and sum(calls) == 3
    assert writes(standin)[-2:] == ["DELETE", "INSERT"]
    rows = target(standin.port).sort_by("id")
    assert rows.column("id").to_pylist() == list(range(60))
    changed = rows.filter(pa.compute.is_in(rows.column("id"), pa.array([0, 3, 30])))
    assert all(s < 0 for s in changed.column("sentiment").to_pylist())
    assert run(job(standin, watermark="updated_at")).written == 0


def test_literals_are_exact(standin):
    strings = ["it's", "a\\", "line\nbreak", "'';--", "🎬 ünï", "", None]
    doubles = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, -2.5e-300, float("nan"), float("inf")]
    rows = pa.table({
        "id": pa.array(range(8), pa.int64()),
        "s": pa.array(strings + ["x"]),
        "d": pa.array(doubles),
        "f": pa.array([0.1, -3.4e38, None, 1.5, 0, 0, 0, 0], pa.float32()),
        "i": pa.array([-2**63, 2**63 - 1, None, 0, 1, 2, 3, 4], pa.int64()),
        "n": pa.array([-2**31, 7, None, 0, 0, 0, 0, 0], pa.int32()),
        "b": pa.array([True, False, None, True, True, True, True, True]),
        "day": pa.array([date(2026, 1, 31), None, *[date(1, 1, 1)] * 6]),
        "dec": pa.array([Decimal("-12345.6789"), Decimal("0.0001"), None, *[Decimal("1")] * 5], pa.decimal128(12, 4)),
        "_scored_at": pa.array([datetime(2026, 3, 1, 12, 30, 45, 123000, tzinfo=timezone.utc)] * 8,
                               pa.timestamp("us", tz="UTC")),
    })
    sink = open_sink('dremio:space."folder.x"."t"', source_uri=uri(standin.port))
    assert sink.schema() is None
    sink.commit(rows, ["id"], replace=False)
    back = sink.read(rows.column_names).sort_by("id")
    assert back.column("s").to_pylist() == strings + ["x"]
    assert [repr(v) for v in back.column("d").to_pylist()] == [repr(v) for v in doubles[:6]] + ["None"] * 2
    for name in ("f", "i", "n", "b", "day", "dec", "_scored_at"):
        assert back.column(name).to_pylist() == rows.column(name).to_pylist(), name
    assert math.copysign(1, back.column("d")[4].as_py()) == -1

    lists = pa.table({"id": [1], "next_4": pa.array([[1.0, 2.0]])})
    with pytest.raises(TargetError, match="is a list.*unnest it first.*forecast_table"):
        sink.commit(lists, ["id"], replace=False)
    with pytest.raises(TargetError, match="NUL"):
        sink.commit(pa.table({"id": [9], "s": ["a\x00b"]}), ["id"], replace=False)


def test_statements_are_bounded_by_rows_and_bytes(monkeypatch):
    assert list(dremio_sink._statements(["(1)"] * 1201)) == [(0, 500), (500, 1000), (1000, 1201)]
    monkeypatch.setattr(dremio_sink, "STATEMENT_BYTES", 100)
    assert list(dremio_sink._statements(["x" * 60, "y" * 30, "🎬" * 20, "z" * 200])) == [(0, 2), (2, 3), (3, 4)]


@pytest.mark.parametrize("into, source, message", [
    ("dremio:justone", None, "a Dremio target is dremio:space.folder.table"),
    ("dremio:a.b; DROP TABLE c", None, "a Dremio target is"),
    ("dremio:a.b", "duckdb:///tmp/lake.db", "writes through the job's Dremio source"),
])
def test_bad_targets_are_clear_errors(standin, into, source, message):
    with pytest.raises(TargetError, match=message):
        open_sink(into, source_uri=source or uri(standin.port))


@pytest.mark.parametrize("variable, secret", [("DREMIO_PASSWORD", "wrong-Pa55"), ("DREMIO_TOKEN", "pat-not-known")])
def test_bad_credentials_exit_non_zero_without_the_secret(standin, env, capfd, variable, secret):
    env.delenv("DREMIO_PASSWORD")
    env.setenv(variable, secret)
    code = main(["enrich", "--source", uri(standin.port), "--sql", SQL, "--key", "id", "--into", INTO])
    out, err = capfd.readouterr()
    assert code != 0 and "error: Dremio refused the" in err
    assert secret not in out + err and PASSWORD not in out + err


STANDIN = """
import json, os, sys, threading, duckdb
sys.path.insert(0, sys.argv[1])
from dremio_standin import DremioStandin
s = DremioStandin(duckdb.connect(sys.argv[2]), json.loads(sys.argv[3]), users={"alice": os.environ["DREMIO_PASSWORD"]})
print(s.start().port, flush=True)
threading.Event().wait()
"""
ROWS, CHUNK, KILLS = 320, 16, 3  # enough chunks that a kill lands before the run can finish


def test_sigkilled_runs_resume_to_every_key_exactly_once(tmp_path, env):
    """The stand-in serves the DuckDB file from its own process, so it outlives every kill."""
    make_reviews(tmp_path / "lake.db", ROWS)
    server = subprocess.Popen([sys.executable, "-c", STANDIN, str(Path(__file__).parent), str(tmp_path / "lake.db"),
                               json.dumps({"space.folder.reviews": "reviews"})], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        rng = random.Random("kill-dremio")
        written, kills = 0, 0
        for _ in range(KILLS):
            kills += kill_after_commits(enrich(port), rng.randint(1, 2), rng.uniform(0.0, 0.05))
            now = check_whole_chunks(port)
            assert now >= written  # committed progress is kept
            written = now
        assert kills >= 2 and written < ROWS, (kills, written)
        final = enrich(port)
        final.communicate(timeout=120)
        assert final.returncode == 0
        assert check_whole_chunks(port) == ROWS
        assert sorted(target(port, ["id"]).column("id").to_pylist()) == list(range(ROWS))
    finally:
        server.kill()
        server.wait()


def enrich(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flight_lstm.cli", "enrich", "--source", uri(port), "--key", "id", "--into", INTO,
         "--sql", "SELECT id, review, sentiment(review) AS sentiment FROM space.folder.reviews",
         "--chunk-rows", str(CHUNK)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def check_whole_chunks(port: int) -> int:
    """Each key at most once, each chunk (one statement here) whole."""
    sink = open_sink(INTO, source_uri=uri(port))
    if sink.schema() is None:
        return 0
    rows = sink.read(["id", "_scored_at"])
    assert max(Counter(rows.column("id").to_pylist()).values()) == 1, "a key was written twice"
    assert set(Counter(rows.column("_scored_at").to_pylist()).values()) <= {CHUNK}, "a chunk is partly there"
    return rows.num_rows
