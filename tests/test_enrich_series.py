"""Scheduled enrichment over the table functions: anomaly_table scores only the points that are
new, from just enough of each series' past, and writes each exactly once; forecast_table keyed on
(key, step) with forecast_origin as the watermark replaces a series' forecasts when it grows."""
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import udfs.anomaly
from flight_lstm.enrich import Job, run
from flight_lstm.errors import InvalidQuery
from flight_lstm.models.series import MAX_CONTEXT
from flight_lstm.service import Service
from flight_lstm.sinks import open_sink
from flight_lstm.sources.duckdb import DuckDBSource

SQL = "SELECT * FROM anomaly_table('metrics', key => 'host', ts => 'ts', value => 'cpu')"
HOSTS = ("web-1", "web-2")


def add_points(path: str, start: int, stop: int) -> None:
    rng = np.random.default_rng(start)
    t = np.arange(start, stop)
    rows = pa.table({  # noqa: F841 (DuckDB reads it by name)
        "host": np.repeat(HOSTS, len(t)),
        "ts": np.tile((np.datetime64("2026-01-01T00:00") + t.astype("timedelta64[h]")).astype("datetime64[s]"), len(HOSTS)),
        "cpu": np.concatenate([40 + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, len(t)) for _ in HOSTS])})
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE IF NOT EXISTS metrics (host VARCHAR, ts TIMESTAMP, cpu DOUBLE)")
        con.execute("INSERT INTO metrics SELECT * FROM rows")


@pytest.fixture
def lake(tmp_path) -> str:
    path = str(tmp_path / "lake.db")
    add_points(path, 0, 3000)
    return path


@pytest.fixture
def points_scored(monkeypatch) -> list[int]:
    """How many points each model call was given."""
    seen: list[int] = []
    load = udfs.anomaly.load_model

    def counting(kind, model):
        fitted = load(kind, model)

        class Counted:
            def score(self, values, lengths, level, starts=None):
                seen.append(len(values))
                return fitted.score(values, lengths, level, starts)
        return Counted()

    monkeypatch.setattr(udfs.anomaly, "load_model", counting)
    return seen


def job(lake: str, **options) -> Job:
    return Job.from_options("alerts", {"source": f"duckdb://{lake}", "sql": SQL, "key": "host,ts",
                                       "into": "cpu_scores", **options})


def written(lake: str) -> pa.Table:
    sink = open_sink("cpu_scores", source_uri=f"duckdb://{lake}")
    return sink.read(list(sink.schema().names)).sort_by([("host", "ascending"), ("ts", "ascending")])


def full_query(lake: str, sql: str = SQL) -> pa.Table:
    service = Service(DuckDBSource(lake))
    schema, batches = service.stream(service.plan(sql + " ORDER BY host, ts"))
    return pa.Table.from_batches(list(batches), schema)


def assert_same_answers(target: pa.Table, full: pa.Table) -> None:
    assert target.num_rows == full.num_rows
    assert target.column("ts").equals(full.column("ts")) and target.column("host").equals(full.column("host"))
    for column in ("expected", "lo", "hi", "score"):
        np.testing.assert_allclose(target.column(column).to_numpy(zero_copy_only=False),
                                   full.column(column).to_numpy(zero_copy_only=False), rtol=1e-9, equal_nan=True)
    assert target.column("is_anomaly").equals(full.column("is_anomaly"))


@pytest.mark.parametrize("sql", [SQL, SQL.replace("'cpu'", "'cpu', freq => 'hourly'")])
def test_chunks_give_the_answers_of_one_full_query(lake, sql):
    with duckdb.connect(lake) as con:  # an outage: on the hourly grid, the model reads its hours as missing
        con.execute("DELETE FROM metrics WHERE host = 'web-1' AND ts BETWEEN TIMESTAMP '2026-02-01' AND TIMESTAMP '2026-02-03'")
    summary = run(job(lake, chunk_rows=700, sql=sql))  # chunks cut series anywhere: each reads its own context
    assert summary.written == 2 * 3000 - 49 and summary.chunks == 9
    assert_same_answers(written(lake), full_query(lake, sql))


def test_a_run_scores_only_new_points_from_a_bounded_past_exactly_once(lake, points_scored):
    run(job(lake))
    before = written(lake)
    add_points(lake, 3000, 3100)
    points_scored.clear()
    summary = run(job(lake))
    assert (summary.scored, summary.written) == (200, 200)
    assert sum(points_scored) <= len(HOSTS) * (MAX_CONTEXT + 100) < 2 * 3100  # not the whole history
    after = written(lake)
    assert after.num_rows == 2 * 3100 and len(set(zip(*after.select(["host", "ts"]).to_pydict().values()))) == 2 * 3100
    assert_same_answers(after, full_query(lake))
    first_new = datetime(2026, 1, 1) + timedelta(hours=3000)
    old = after.filter(pa.compute.less(after.column("ts"), pa.scalar(first_new, after.schema.field("ts").type)))
    assert old.column("_scored_at").equals(before.column("_scored_at"))  # written once, never again
    points_scored.clear()
    assert (run(job(lake)).written, points_scored) == (0, [])  # nothing new: no model call at all


@pytest.mark.parametrize("sql, key, message", [
    (SQL + " WHERE is_anomaly", "host,ts", "drop WHERE"),
    (SQL, "host", "keyed on its series and time: --key host,ts"),
    ("SELECT m.host, a.ts, a.score FROM metrics AS m JOIN anomaly_table('metrics', key => 'host', ts => 'ts', "
     "value => 'cpu') AS a ON m.host = a.host AND m.ts = a.ts", "host,ts", "selects straight FROM anomaly_table"),
])
def test_jobs_the_incremental_filter_cannot_serve_are_refused(lake, sql, key, message):
    with pytest.raises(InvalidQuery, match=message):
        run(Job.from_options("a", {"source": f"duckdb://{lake}", "sql": sql, "key": key, "into": "cpu_scores"}))


def test_a_forecast_job_replaces_a_series_forecasts_when_it_grows_one_point_series_too(lake):
    with duckdb.connect(lake) as con:
        con.execute("INSERT INTO metrics VALUES ('solo', TIMESTAMP '2026-01-01', 5.0)")
    forecasts = Job.from_options("f", {
        "source": f"duckdb://{lake}", "key": "host,step", "watermark": "forecast_origin", "into": "cpu_forecast",
        "sql": "SELECT * FROM forecast_table('metrics', key => 'host', ts => 'ts', value => 'cpu', horizon => 4)"})
    assert run(forecasts).written == 3 * 4
    assert run(forecasts).written == 0  # nothing new: nothing replaced
    add_points(lake, 3000, 3002)  # web-1 and web-2 grow; solo does not
    assert run(forecasts).written == 2 * 4
    with duckdb.connect(lake) as con:
        rows = con.execute("SELECT host, count(*), min(forecast_origin), count(ts) FROM cpu_forecast "
                           "GROUP BY host ORDER BY host").fetchall()
    last = datetime(2026, 1, 1) + timedelta(hours=3001)
    assert rows == [("solo", 4, datetime(2026, 1, 1), 0), ("web-1", 4, last, 4), ("web-2", 4, last, 4)]
