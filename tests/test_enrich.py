"""Enrichment runs in-process against real DuckDB files, Parquet directories and Iceberg tables."""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from enrichment import SENTIMENT_REF, SQL, job, make_reviews, source_sql, target_rows
from flight_lstm.cli import main
from flight_lstm.enrich import Job, JobError, TargetBusy, load_jobs, run, run_scheduled
from flight_lstm.plan.increment import DONE, build
from flight_lstm.plan.parse import parse_one_query
from flight_lstm.enrich.lock import target_lock
from flight_lstm.enrich.schedule import Schedule, parse_interval
from flight_lstm.errors import InvalidQuery, QueryRefused, SourceUnavailable
from flight_lstm.plan import Catalog
from flight_lstm.sinks import TargetError, open_sink
from udfs import OPERATORS


@pytest.mark.parametrize("into", ["reviews_scored", "parquet", "iceberg"])
def test_first_run_writes_every_row_with_lineage_and_second_writes_nothing(reviews_lake, tmp_path, calls, into):
    into = {"parquet": f"parquet://{tmp_path}/scored", "iceberg": f"iceberg://{tmp_path}/wh/lake.scored"}.get(into, into)
    if into.startswith("iceberg"):
        (tmp_path / "wh").mkdir()
    first = run(job(reviews_lake, into))
    assert (first.read, first.scored, first.written, first.skipped, first.chunks) == (60, 60, 60, 0, 3)
    rows = target_rows(reviews_lake, into)
    assert rows.column("id").to_pylist() == list(range(60))
    assert set(rows.column("_model").to_pylist()) == {SENTIMENT_REF}
    assert rows.schema.field("_scored_at").type.tz in ("UTC", "Etc/UTC")
    assert rows.column("sentiment")[0].as_py() > 0.5 and rows.column("sentiment")[1].as_py() < -0.5
    assert sum(calls) == 60

    calls.clear()
    second = run(job(reviews_lake, into))
    assert (second.read, second.scored, second.written, second.skipped) == (60, 0, 0, 60)
    assert calls == []  # already-scored rows cost no model call
    assert target_rows(reviews_lake, into).num_rows == 60


def test_new_rows_only_are_scored(reviews_lake, calls):
    run(job(reviews_lake))
    source_sql(reviews_lake,
               "INSERT INTO reviews SELECT 100 + i, 0, 'great fun', TIMESTAMP '2026-01-01' FROM range(7) t(i)")
    calls.clear()
    summary = run(job(reviews_lake))
    assert (summary.scored, summary.written, summary.skipped) == (7, 7, 60)
    assert sum(calls) == 7
    assert target_rows(reviews_lake).num_rows == 67


@pytest.mark.parametrize("into", ["reviews_scored", "iceberg"])
def test_watermark_rescores_changed_rows_and_keeps_each_key_once(reviews_lake, tmp_path, calls, into):
    if into == "iceberg":
        (tmp_path / "wh").mkdir()
        into = f"iceberg://{tmp_path}/wh/lake.scored"
    run(job(reviews_lake, into, watermark="updated_at"))
    source_sql(reviews_lake, "UPDATE reviews SET review = 'an awful , boring mess', "
                             "updated_at = TIMESTAMP '2026-02-01' WHERE id IN (0, 3, 30)")
    calls.clear()
    summary = run(job(reviews_lake, into, watermark="updated_at"))
    assert (summary.scored, summary.written) == (3, 3)
    assert sum(calls) == 3
    rows = target_rows(reviews_lake, into)
    assert rows.column("id").to_pylist() == list(range(60))
    changed = rows.filter(pa.compute.is_in(rows.column("id"), pa.array([0, 3, 30])))
    assert all(s < 0 for s in changed.column("sentiment").to_pylist())
    assert run(job(reviews_lake, into, watermark="updated_at")).written == 0


def test_rescore_on_model_change(reviews_lake, calls):
    run(job(reviews_lake))
    source_sql(reviews_lake, "UPDATE reviews_scored SET _model = 'older-model@0' WHERE id < 5")
    assert run(job(reviews_lake)).written == 0  # without the option the old rows stand
    calls.clear()
    summary = run(job(reviews_lake, rescore_on_model_change=True))
    assert summary.written == 5 and sum(calls) == 5
    rows = target_rows(reviews_lake)
    assert rows.num_rows == 60 and set(rows.column("_model").to_pylist()) == {SENTIMENT_REF}


def test_composite_key_and_aliased_key(reviews_lake, calls):
    sql = "SELECT id AS review_id, part, sentiment_label(review) AS label FROM reviews"
    make = lambda: Job.from_options("c", {"source": reviews_lake, "sql": sql, "key": "review_id,part",
                                          "into": "labels", "chunk_rows": 40})
    assert run(make()).written == 60
    calls.clear()
    assert run(make()).written == 0 and calls == []
    assert open_sink("labels", source_uri=reviews_lake).read(["review_id", "part"]).num_rows == 60


def test_group_by_forecast_keyed_by_group(tmp_path):
    lake = make_reviews(tmp_path / "lake.db")
    source_sql(lake, "CREATE TABLE sales AS SELECT 's' || (i % 3) AS store, i AS t, (i % 24)::DOUBLE AS amount "
                     "FROM range(300) r(i)")
    sql = "SELECT store, forecast(list(amount ORDER BY t), 4) AS next_4 FROM sales GROUP BY store"
    make = lambda: Job.from_options("f", {"source": lake, "sql": sql, "key": "store", "into": "forecasts"})
    assert run(make()).written == 3
    assert run(make()).written == 0
    rows = open_sink("forecasts", source_uri=lake).read(["store", "next_4", "_model"])
    assert sorted(rows.column("store").to_pylist()) == ["s0", "s1", "s2"]
    assert rows.column("_model")[0].as_py().startswith("m4-hourly-lstm@")


def test_parquet_is_append_only_and_files_are_whole(reviews_lake, tmp_path):
    into = f"parquet://{tmp_path}/scored"
    run(job(reviews_lake, into))
    files = sorted((tmp_path / "scored").glob("*.parquet"))
    assert [ds.dataset(f).count_rows() for f in files] == [25, 25, 10]
    with pytest.raises(JobError, match="append-only"):
        run(job(reviews_lake, into, watermark="updated_at"))


def test_dry_run_prints_plan_and_filter_and_writes_nothing(reviews_lake, calls):
    printed = []
    summary = run(job(reviews_lake), dry_run=True, out=printed.append)
    assert summary.written == 0 and calls == []
    text = printed[0]
    assert "NOT EXISTS" in text and "_done_keys" in text and "60 to score in 3 chunk(s)" in text
    assert open_sink("reviews_scored", source_uri=reviews_lake).schema() is None


@pytest.mark.parametrize("sql, error", [
    ("SELECT id, sentiment(review) AS s FROM nowhere", InvalidQuery),
    ("SELECT id, sentiment(review) AS s FROM reviews LIMIT 3", InvalidQuery),
    ("SELECT id FROM reviews WHERE sentiment(review) > 0", InvalidQuery),
    ("SELECT sentiment(review) AS s FROM reviews", InvalidQuery),  # the key is not in the output
    ("DELETE FROM reviews", QueryRefused),
])
def test_bad_query_leaves_target_as_it_was(reviews_lake, sql, error):
    run(job(reviews_lake))
    before = target_rows(reviews_lake)
    with pytest.raises(error):
        run(Job.from_options("bad", {"source": reviews_lake, "sql": sql, "key": "id", "into": "reviews_scored"}))
    assert target_rows(reviews_lake).equals(before)


def test_missing_target_schema_and_mismatched_target_are_clear_errors(reviews_lake):
    with pytest.raises(TargetError, match="schema 'nosuch' does not exist"):
        run(job(reviews_lake, "nosuch.scored"))
    source_sql(reviews_lake, "CREATE TABLE other (id BIGINT, x INTEGER)")
    with pytest.raises(TargetError, match="has columns"):
        run(job(reviews_lake, "other"))


def test_source_failing_mid_run_keeps_committed_chunks(reviews_lake, monkeypatch):
    from flight_lstm.service import Service

    real, seen = Service.collect, []

    def failing(service, plan, tables):
        seen.append(1)
        if len(seen) == 3:  # keys query, chunk 1, then chunk 2 fails
            raise SourceUnavailable("the source went away")
        return real(service, plan, tables)

    monkeypatch.setattr(Service, "collect", failing)
    with pytest.raises(SourceUnavailable):
        run(job(reviews_lake))
    assert target_rows(reviews_lake).num_rows == 25
    monkeypatch.setattr(Service, "collect", real)
    assert run(job(reviews_lake)).written == 35
    assert target_rows(reviews_lake).column("id").to_pylist() == list(range(60))


def test_duplicate_keys_in_the_query_are_refused(reviews_lake):
    bad = Job.from_options("d", {"source": reviews_lake, "sql": "SELECT part, sentiment(review) AS s FROM reviews",
                                 "key": "part", "into": "by_part"})
    with pytest.raises(JobError, match="not unique"):
        run(bad)


def test_second_run_on_a_busy_target_exits_with_a_message(reviews_lake):
    sink = open_sink("reviews_scored", source_uri=reviews_lake)
    with target_lock(sink.lock_path, sink.describe()):
        with pytest.raises(TargetBusy, match="another enrichment run"):
            run(job(reviews_lake))
        done = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "enrich", "--source", reviews_lake,
                               "--sql", SQL, "--key", "id", "--into", "reviews_scored"], capture_output=True, text=True)
        assert done.returncode == 75 and "another enrichment run" in done.stderr
    assert run(job(reviews_lake)).written == 60


def test_waiting_run_queues_behind_the_holder(reviews_lake):
    sink = open_sink("reviews_scored", source_uri=reviews_lake)
    results = []
    with target_lock(sink.lock_path, sink.describe()):
        waiter = threading.Thread(target=lambda: results.append(run(job(reviews_lake), wait=True)))
        waiter.start()
        time.sleep(0.5)
        assert not results
    waiter.join(30)
    assert results[0].written == 60


def test_cli_runs_a_jobs_file_and_reports_bad_queries(reviews_lake, tmp_path, capsys):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'''
[defaults]
source = "{reviews_lake}"
key = "id"
[jobs.scores]
sql = "SELECT id, sentiment(review) AS s FROM reviews"
into = "scores"
[jobs.labels]
sql = "SELECT id, sentiment_label(review) AS label FROM reviews"
into = "labels"
every = "15m"
''')
    assert [j.name for j in load_jobs(jobs)] == ["scores", "labels"]
    assert main(["enrich", "--jobs", str(jobs), "--job", "scores"]) == 0
    assert "written=60" in capsys.readouterr().out
    assert main(["enrich", "--jobs", str(jobs), "--once"]) == 0
    assert open_sink("labels", source_uri=reviews_lake).read(["id"]).num_rows == 60
    assert main(["enrich", "--source", reviews_lake, "--sql", "SELECT id, nosuch(review) FROM reviews", "--key", "id",
                 "--into", "scores"]) == 1
    assert "error:" in capsys.readouterr().err
    assert open_sink("scores", source_uri=reviews_lake).read(["id"]).num_rows == 60


def test_schedules():
    assert parse_interval("15m") == 900 and parse_interval("1.5h") == 5400 and parse_interval(30) == 30
    with pytest.raises(ValueError):
        parse_interval("soon")
    with pytest.raises(ValueError):
        Schedule.parse(cron="every minute")
    assert Schedule.parse() is None
    from datetime import datetime

    cron = Schedule.parse(cron="*/15 * * * *")
    assert cron.next(datetime(2026, 1, 1, 10, 7)) == datetime(2026, 1, 1, 10, 15)

    ran, stop = [], threading.Event()

    def run_one(job):
        ran.append(job.name)
        if len(ran) == 3:
            stop.set()
        from flight_lstm.enrich import Summary
        return Summary(job.name, "x")

    every = Job.from_options("tick", {"source": "duckdb:///x.db", "sql": "SELECT 1 AS k", "key": "k", "into": "t",
                                      "every": "0.05s"})
    run_scheduled([every], run_one, stop)
    assert ran == ["tick"] * 3


def test_a_scheduled_job_whose_target_the_file_system_refuses_logs_it_and_tries_again(reviews_lake, tmp_path, caplog):
    target = tmp_path / "scored"
    target.write_text("not a directory")
    into = f"parquet://{target}"
    ran, stop = [], threading.Event()

    def run_one(j):
        try:
            summary = run(j)
        except Exception as e:
            ran.append(e)
            if len(ran) == 2:
                target.unlink()  # an operator clears the way
            raise
        ran.append(summary)
        stop.set()
        return summary

    with caplog.at_level(logging.WARNING, logger="flight_lstm.enrich"):
        run_scheduled([job(reviews_lake, into, every="0.05s")], run_one, stop)
    assert [type(r).__name__ for r in ran] == ["TargetUnavailable", "TargetUnavailable", "Summary"]
    assert ran[-1].written == 60
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(f"parquet:{target}" in w and "File exists" in w for w in warnings), warnings
    assert target_rows(reviews_lake, into).column("id").to_pylist() == list(range(60))


def test_planner_keeps_local_tables_local():
    increment = build(parse_one_query(SQL), ("id",), OPERATORS, watermark="updated_at")
    catalog = Catalog(operators=OPERATORS, pushdown_dialect="dremio",
                      columns_of=lambda t: ["id", "review", "updated_at"])
    plan = catalog.plan(increment.keys_query, local_tables=(DONE,))
    assert plan.tables == ("reviews",)
    assert plan.scans and all(DONE not in sql for _, sql in plan.scans)
    assert DONE in plan.sql


def test_a_commit_waits_for_a_server_in_this_process_to_let_go_of_the_file(reviews_lake):
    from flight_lstm.engine import Engine
    from flight_lstm.plan import Plan
    from flight_lstm.sources.duckdb import DuckDBSource

    source = DuckDBSource.from_uri(reviews_lake)
    source.keep_attached = 1.0
    schema, batches = Engine(source, OPERATORS).stream(Plan("SELECT count(*) FROM reviews", ("reviews",), frozenset()))
    assert sum(b.num_rows for b in batches) == 1  # the file stays attached for a second after this
    started = time.monotonic()
    open_sink("duckdb:scored", source_uri=reviews_lake).commit(pa.table({"id": [1]}), ["id"], replace=False)
    assert time.monotonic() - started >= 0.5  # it waited instead of failing on the attached file
    assert target_rows(reviews_lake, "scored").column("id").to_pylist() == [1]
