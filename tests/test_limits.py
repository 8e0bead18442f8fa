"""The server's limits and telemetry: past a limit one query gets a clear error and the server goes
on; every query, however it ends, leaves one log line and counts in the Prometheus metrics."""
from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import run, start_server

from flight_lstm.engine import Limits
from flight_lstm.errors import InvalidQuery
from flight_lstm import service as service_module
from flight_lstm.server import telemetry
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

# Each 2,048-row chunk of short texts costs the model a fraction of a second: minutes in all. (A
# limit acts between the operator's chunks, so the chunks here are kept short.)
SLOW_STREAM = "SELECT sentiment(repeat('a fine film ', 4) || i) AS s FROM range(400000) t(i)"
SLOW_BLOCKING = f"SELECT count(*) AS n FROM ({SLOW_STREAM}) WHERE s > 2"


def serve(lake, **limits):
    return start_server(Service(DuckDBSource(lake), batch_rows=100, limits=Limits(**limits)))


def test_past_max_queries_a_query_waits_then_gets_unavailable(lake):
    srv, uri = serve(lake, max_queries=1, queue_seconds=0.3)
    try:
        with flight.connect(uri) as first, flight.connect(uri) as second:
            # A long result: the server blocks on the unread stream and keeps its one slot.
            held = first.do_get(flight.Ticket(b"SELECT range AS i FROM range(20000000)"))
            held.read_chunk()
            started = time.monotonic()
            with pytest.raises(flight.FlightUnavailableError, match=r"resource exhausted.*--max-queries"):
                run(second, "SELECT 1 AS x")
            assert time.monotonic() - started >= 0.3  # it waited for a slot first
            held.cancel()
            deadline = time.monotonic() + 30
            while True:  # the slot comes back once the server sees the cancel
                try:
                    assert run(second, "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42
                    break
                except flight.FlightUnavailableError:
                    assert time.monotonic() < deadline
    finally:
        srv.shutdown()


@pytest.mark.parametrize("sql", [SLOW_STREAM, SLOW_BLOCKING], ids=["streaming", "blocking"])
def test_a_query_past_its_time_limit_is_stopped_with_deadline_exceeded(lake, sql):
    srv, uri = serve(lake, query_seconds=1.0)
    try:
        with flight.connect(uri) as c:
            started = time.monotonic()
            with pytest.raises(flight.FlightTimedOutError, match="time limit of 1 s"):
                c.do_get(flight.Ticket(sql.encode())).read_all()
            assert time.monotonic() - started < 20  # stopped mid-work, not run to the end
            assert run(c, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == 8
    finally:
        srv.shutdown()


def test_a_result_past_max_rows_ends_with_a_clear_error(lake):
    srv, uri = serve(lake, max_rows=1000)
    try:
        with flight.connect(uri) as c:
            assert run(c, "SELECT * FROM range(1000)").num_rows == 1000
            with pytest.raises(flight.FlightUnavailableError, match=r"limit of 1,000 rows.*LIMIT"):
                run(c, "SELECT * FROM range(5000)")
            assert run(c, "SELECT * FROM range(10)").num_rows == 10
    finally:
        srv.shutdown()


def test_duckdb_out_of_memory_is_unavailable_for_that_query_only(lake):
    srv, uri = start_server(Service(DuckDBSource(lake), memory_limit="64MB"))
    try:
        with flight.connect(uri) as c:
            with pytest.raises(flight.FlightUnavailableError, match="(?i)out of memory"):
                run(c, "SELECT string_agg(repeat('x', 200) || i, ',') AS s FROM range(3000000) t(i)")
            assert run(c, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == 8
    finally:
        srv.shutdown()


def test_every_query_logs_one_line_without_its_sql(lake, caplog):
    srv, uri = serve(lake)
    try:
        with flight.connect(uri) as c, caplog.at_level(logging.INFO, "flight_lstm.server"):
            run(c, "SELECT id, sentiment(review) AS s FROM reviews WHERE review = 'secret words'")
            with pytest.raises(pa.ArrowInvalid):
                run(c, "SELECT nope('secret words')")
            deadline = time.monotonic() + 10
            while len([r for r in caplog.records if "query kind=" in r.getMessage()]) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
    finally:
        srv.shutdown()
    lines = [r.getMessage() for r in caplog.records if "query kind=" in r.getMessage()]
    assert [re.search(r"kind=(\w+) user=\S+ outcome=(\w+)", m).groups() for m in lines] == [
        ("do_get", "ok"), ("get_flight_info", "InvalidQuery")]
    assert "operators=sentiment" in lines[0] and "rows=0" in lines[0]
    assert not any("secret" in r.getMessage() for r in caplog.records)


def test_a_query_refused_while_planning_logs_the_time_its_planning_took(lake, caplog):
    service = Service(DuckDBSource(lake))

    def slow_refusal(sql, local_tables=(), user=None):
        time.sleep(0.3)
        raise InvalidQuery("refused after planning")

    service.plan = slow_refusal
    srv, uri = start_server(service)
    try:
        with flight.connect(uri) as c, caplog.at_level(logging.INFO, "flight_lstm.server"):
            with pytest.raises(pa.ArrowInvalid, match="refused after planning"):
                run(c, "SELECT 1")
    finally:
        srv.shutdown()
    line, = [r.getMessage() for r in caplog.records if "query kind=get_flight_info" in r.getMessage()]
    assert float(re.search(r"seconds=([0-9.]+)", line).group(1)) >= 0.3


def test_silent_metrics_connections_take_a_few_threads_for_a_few_seconds(monkeypatch):
    """The metrics port needs no login: 300 connections that never finished a request once took
    every thread the process could start, the queries' watchdog among them."""
    monkeypatch.setattr(telemetry, "METRICS_SECONDS", 0.5)
    port = telemetry.serve_metrics("127.0.0.1", 0)
    before = threading.active_count()
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    for s in silent:
        s.sendall(b"GET /m")  # and never the rest
    time.sleep(0.2)
    assert threading.active_count() - before <= 2 * telemetry.METRICS_CONNECTIONS  # a handler and its deadline each
    time.sleep(1.0)  # past the read timeout: the silent ones were dropped
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "flight_lstm_queries_running" in text
    for s in silent:
        s.close()
    dripping = [socket.create_connection(("127.0.0.1", port)) for _ in range(telemetry.METRICS_CONNECTIONS)]
    stop = threading.Event()

    def drip(connection):  # a byte every 0.2 s: never silent for the read timeout
        while not stop.wait(0.2):
            try:
                connection.sendall(b"G")
            except OSError:
                return

    for c in dripping:
        threading.Thread(target=drip, args=(c,), daemon=True).start()
    time.sleep(1.0)  # past each connection's whole life
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert "flight_lstm_queries_running" in text
    stop.set()
    for c in dripping:
        c.close()


def test_metrics_count_queries_rows_and_outcomes(lake, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}", "--port", "0",
         "--metrics-port", "0", "--max-rows", "100"], stdout=subprocess.PIPE, text=True)
    try:
        uri = proc.stdout.readline().strip().rsplit(" on ", 1)[1]
        metrics_url = proc.stdout.readline().strip().rsplit(" on ", 1)[1]
        with flight.connect(uri) as c:
            assert run(c, "SELECT id, sentiment(review) FROM reviews").num_rows == 8
            assert run(c, "SELECT * FROM range(30)").num_rows == 30
            with pytest.raises(pa.ArrowInvalid):
                run(c, "SELECT FROM WHERE")
            with pytest.raises(flight.FlightUnavailableError):
                run(c, "SELECT * FROM range(1000)")
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    def value(name: str) -> float:
        return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))

    assert value('flight_lstm_queries_total{outcome="ok"}') == 2
    assert value('flight_lstm_queries_total{outcome="InvalidQuery"}') == 1
    assert value('flight_lstm_queries_total{outcome="ResourceExhausted"}') == 1
    assert value("flight_lstm_rows_total") == 38  # the refused result sent none of its rows
    assert value("flight_lstm_query_seconds_count") == 4
    assert value("flight_lstm_queries_running") == 0


def test_health_lists_the_source_once_for_many_asks(lake, tmp_path, monkeypatch):
    """Round 13: every health call listed the source (a new DuckDB and an ATTACH, ~20 ms of CPU),
    for anonymous callers too and outside the call limits: 8 threads asking took a logged-in user's
    median query from 28 to 379 ms. One listing now answers every ask for HEALTH_SECONDS, callers
    at once waiting for it, unless the source changed meanwhile."""
    path = tmp_path / "lake.db"
    path.write_bytes(open(lake, "rb").read())
    service = Service(DuckDBSource(path))
    listed, tables = [], service.source.tables
    monkeypatch.setattr(service.source, "tables", lambda: listed.append(1) or tables())
    monkeypatch.setattr(service_module, "HEALTH_SECONDS", 60.0)
    answers = []
    askers = [threading.Thread(target=lambda: answers.extend(service.health()["status"] for _ in range(20)))
              for _ in range(8)]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    assert answers == ["ok"] * 160 and len(listed) == 1
    path.unlink()  # the source changes: listed again, and found gone
    assert service.health()["status"] == "unavailable" and len(listed) == 2
    monkeypatch.setattr(service_module, "HEALTH_SECONDS", 0.0)  # time passes
    service.health()
    assert len(listed) == 3


def test_health_does_not_wait_for_a_listing_under_way(lake, monkeypatch):
    """Round 15: a query filling glibc's heap made opening DuckDB for a listing wait ~10 s, and every
    other health call waited behind it. Now only the caller that lists waits; the others take the
    last listing's answer at once."""
    service = Service(DuckDBSource(lake))
    assert service.health()["status"] == "ok"  # the first listing
    slow, tables = threading.Event(), service.source.tables
    monkeypatch.setattr(service.source, "tables", lambda: slow.wait(5) and tables())
    monkeypatch.setattr(service_module, "HEALTH_SECONDS", 0.0)  # every ask would list
    lister = threading.Thread(target=service.health)
    lister.start()
    time.sleep(0.2)  # it is listing
    started = time.monotonic()
    answers = [service.health()["status"] for _ in range(20)]
    assert answers == ["ok"] * 20 and time.monotonic() - started < 0.5
    slow.set()
    lister.join()
    service.close()


def test_health_answers_at_once_when_every_slot_is_busy(lake):
    service = Service(DuckDBSource(lake), limits=Limits(max_queries=1, queue_seconds=5))
    with service.engine.admitted():  # the one slot runs a query
        started = time.monotonic()
        health = service.health()
        assert time.monotonic() - started < 1 and health["status"] == "ok" and health["busy"]
    assert service.health() == {"status": "ok", "source": service.source.describe(), "views": []}
