"""Hostile clients against the server's limits: a client that never reads or never sends loses its
slot, metadata and schema requests queue for slots like queries, patterns cannot stall the
server, malformed requests are clean errors with one log line, caches are bounded by bytes."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import run, start_server
from google.protobuf.any_pb2 import Any
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_lstm import heap
from flight_lstm.engine.limits import Limits, parse_size
from flight_lstm.engine.watchdog import Watchdog
from flight_lstm.errors import QueryTimedOut
from flight_lstm.server import errors as server_errors
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.server.flight_sql_metadata import like
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

BIG = b"SELECT range AS i, repeat('x', 100) AS pad FROM range(50000000)"


def serve(lake, **limits):
    return start_server(Service(DuckDBSource(lake), limits=Limits(**limits)))


def eventually(check, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except flight.FlightUnavailableError:
            assert time.monotonic() < deadline, "the slots never came back"


@pytest.mark.parametrize("limits", [{"query_seconds": 1.0}, {"query_seconds": None, "idle_seconds": 1.0}],
                         ids=["time limit", "idle timeout"])
def test_streams_never_read_give_their_slots_back(lake, limits):
    srv, uri = serve(lake, max_queries=2, queue_seconds=0.2, **limits)
    try:
        with flight.connect(uri) as a, flight.connect(uri) as b, flight.connect(uri) as c:
            held = [a.do_get(flight.Ticket(BIG)), b.do_get(flight.Ticket(BIG))]
            for stream in held:
                stream.read_chunk()  # both run, and neither is read again
            started = time.monotonic()
            got = eventually(lambda: run(c, "SELECT 41 + 1 AS x"))
            assert got.column("x")[0].as_py() == 42
            assert time.monotonic() - started < 15
            time.sleep(2.0)  # one stream's end freed the slot above; the other's limit passes by now too
            for stream in held:  # the silent client learns why when it reads again
                with pytest.raises(flight.FlightTimedOutError, match="time limit|neither read nor sent"):
                    stream.read_all()
    finally:
        srv.shutdown()


def test_a_watchdog_that_cannot_start_fails_one_query_and_keeps_nothing(lake, monkeypatch):
    """With no thread left to start (a flood of idle connections took them), the query that would
    start the watchdog fails; it gave its slot and cursor back, and the next one starts it."""
    service = Service(DuckDBSource(lake), limits=Limits(max_queries=1, queue_seconds=0.2, query_seconds=1.0))
    start = threading.Thread.start

    def no_thread_for_the_watchdog(thread):
        if thread.name == "flight-lstm-watchdog":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", no_thread_for_the_watchdog)
    running = heap._queries
    with pytest.raises(RuntimeError, match="can't start new thread"):
        service.stream(service.plan("SELECT 41 + 1 AS x"))
    assert heap._queries == running  # not counted as running for good: DuckDB's memory is still purged
    monkeypatch.setattr(threading.Thread, "start", start)
    _, batches = service.stream(service.plan(BIG.decode()))  # the one slot: it was given back
    next(batches)
    assert any(t.name == "flight-lstm-watchdog" for t in threading.enumerate())
    time.sleep(1.5)
    with pytest.raises(QueryTimedOut):
        list(batches)


def test_the_watchdog_outlives_a_query_that_ended_while_it_was_stopped():
    """The watchdog lists the due queries, then stops each: one that ended on its own thread in
    between has a closed cursor, and its `interrupt` raised in the watchdog's thread, which died
    looking alive (no limit enforced again). It now goes on to the next query, and the next tick."""
    class Ended:
        def due(self):
            return True

        def stop(self):
            raise duckdb.ConnectionException("Connection already closed!")

    class Due:
        stopped = threading.Event()

        def due(self):
            return True

        def stop(self):
            self.stopped.set()

    watchdog = Watchdog()
    watchdog.watch(Ended())
    later = Due()
    watchdog.watch(later)
    assert later.stopped.wait(5)
    again = Due()
    again.stopped = threading.Event()
    watchdog.watch(again)
    assert again.stopped.wait(5)


def test_an_exchange_that_never_sends_gives_its_slot_back(lake):
    srv, uri = serve(lake, max_queries=1, queue_seconds=0.2, query_seconds=None, idle_seconds=1.0)
    try:
        with flight.connect(uri) as a, flight.connect(uri) as c:
            writer, reader = a.do_exchange(flight.FlightDescriptor.for_command("SELECT * FROM input"))
            writer.begin(pa.schema([("x", pa.int64())]))  # the schema, then nothing
            time.sleep(0.3)
            assert eventually(lambda: run(c, "SELECT 7 AS x")).column("x")[0].as_py() == 7
            with pytest.raises(flight.FlightTimedOutError, match="neither read nor sent"):
                writer.write_batch(pa.record_batch([pa.array([1])], names=["x"]))
                writer.done_writing()
                reader.read_all()
    finally:
        srv.shutdown()


def test_get_flight_info_planning_and_listings_wait_for_a_slot(lake):
    srv, uri = serve(lake, max_queries=1, queue_seconds=0.3)
    try:
        with flight.connect(uri) as a, flight.connect(uri) as c:
            held = a.do_get(flight.Ticket(BIG))
            held.read_chunk()
            with pytest.raises(flight.FlightUnavailableError, match="--max-queries"):
                c.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT len(range(30000000)) AS n"))
            with pytest.raises(flight.FlightUnavailableError, match="--max-queries"):
                list(c.list_flights())
            with pytest.raises(flight.FlightUnavailableError, match="--max-queries"):
                c.get_flight_info(flight.FlightDescriptor.for_path("nope"))
            with pytest.raises(flight.FlightUnavailableError, match="--max-queries"):  # planning alone
                c.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT 1 IN (0, 1, 2) AS x"))
            held.cancel()
            assert eventually(lambda: run(c, "SELECT 1 AS x")).num_rows == 1
    finally:
        srv.shutdown()


def test_a_backtracking_table_pattern_answers_at_once(client):
    command = messages.CommandGetTables(table_name_filter_pattern="%" * 44 + "!")
    descriptor = flight.FlightDescriptor.for_command(messages.pack(command))
    started = time.monotonic()
    info = client.get_flight_info(descriptor)
    assert client.do_get(info.endpoints[0].ticket).read_all().num_rows == 0
    assert time.monotonic() - started < 5  # a regex took 10.8 s; the matcher is linear in each name
    long = messages.CommandGetTables(table_name_filter_pattern="%" * 5000)
    with pytest.raises(pa.ArrowInvalid, match="at most 1000 characters"):
        info = client.get_flight_info(flight.FlightDescriptor.for_command(messages.pack(long)))
        client.do_get(info.endpoints[0].ticket).read_all()


@settings(max_examples=300, deadline=None)
@given(st.text("ab%_\\", max_size=8), st.text("ab%_\\", max_size=8))
def test_the_pattern_matcher_agrees_with_the_pattern_rules(pattern, name):
    rx = "".join(re.escape(t[-1]) if t.startswith("\\") else ".*" if t == "%" else "." if t == "_" else re.escape(t)
                 for t in re.findall(r"\\.|.", pattern, re.S))
    assert like(pattern)(name) == (re.fullmatch(rx, name, re.S) is not None)


MALFORMED = ["CommandGetTables", "CommandGetDbSchemas", "CommandGetSqlInfo", "CommandStatementQuery",
             "CommandPreparedStatementQuery", "TicketStatementQuery"]


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_flight_sql_messages_are_clean_errors_without_traceback(client, name, caplog):
    garbage = Any(type_url=messages.TYPE_URL_PREFIX + name, value=b"\xff\xff\xff\xff").SerializeToString()
    caplog.set_level(logging.INFO)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowNotImplementedError),
                       match=f"malformed Flight SQL {name}|{name} is not supported") as e:
        info = client.get_flight_info(flight.FlightDescriptor.for_command(garbage))
        client.do_get(info.endpoints[0].ticket).read_all()
    assert "Traceback" not in str(e.value)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowNotImplementedError), match="malformed|not supported"):
        client.do_get(flight.Ticket(garbage)).read_all()
    assert "Traceback" not in caplog.text
    request = Any(type_url=messages.TYPE_URL_PREFIX + "ActionCreatePreparedStatementRequest", value=b"\xff\xff")
    with pytest.raises(pa.ArrowInvalid, match="malformed"):
        list(client.do_action(flight.Action("CreatePreparedStatement", request.SerializeToString())))


def test_a_sparse_union_in_an_exchange_is_a_clean_error(client, caplog):
    union = pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])])
    batch = pa.record_batch([union], names=["u"])
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command("SELECT * FROM input"))
    with pytest.raises(pa.ArrowInvalid, match="cannot read the batches"):
        writer.begin(batch.schema)
        writer.write_batch(batch)
        writer.done_writing()
        reader.read_all()
    assert "Traceback" not in caplog.text
    assert run(client, "SELECT 1 AS x").num_rows == 1


def test_an_internal_failure_logs_its_traceback_once_a_minute(caplog):
    def fail():
        raise RuntimeError("boom")

    caplog.set_level(logging.ERROR, logger="flight_lstm.server")
    server_errors._traced.clear()
    for _ in range(3):
        try:
            fail()
        except RuntimeError as e:
            assert isinstance(server_errors.to_flight_error(e), flight.FlightInternalError)
    assert caplog.text.count("Traceback") == 1
    assert caplog.text.count("again (traceback logged at most once a minute)") == 2


def test_caches_are_bounded_by_bytes_not_entries(lake):
    service = Service(DuckDBSource(lake))
    pad = "x" * 200_000
    for i in range(120):  # 120 distinct queries of 0.2 MB: 24 MB of text, each in two caches
        sql = f"SELECT '{pad}' AS p, {i} AS i"
        service.schema(service.plan(sql))
    cap = 16 * 2**20
    assert 0 < service._plans.bytes <= cap and 0 < service._schemas.bytes <= cap
    assert service.schema(service.plan("SELECT 1 AS one")).names == ["one"]
    for i in range(120):  # texts whose plans are small (a comment is dropped): the texts are what is kept
        service.plan(f"SELECT {i} AS i -- {pad}", user=f"user{i % 3}")
    assert len(service._plans._values) <= cap // len(pad) + 1


def test_a_slow_blocking_query_is_not_mistaken_for_a_silent_client(lake):
    # The query's own work (before its first batch) outlasts the idle time: it must still answer.
    srv, uri = serve(lake, query_seconds=None, idle_seconds=0.3)
    try:
        with flight.connect(uri) as c:
            got = run(c, "SELECT count(*) AS n FROM (SELECT sentiment('a fine film ' || i) AS s "
                         "FROM range(6000) t(i)) WHERE s > 2")
            assert got.column("n")[0].as_py() == 0
            # A lifted operator call: the model's time on a batch is the server's too.
            got = run(c, "SELECT sentiment('a fine film ' || i) AS s FROM range(20000) t(i)")
            assert got.num_rows == 20000
    finally:
        srv.shutdown()


FORECAST = "SELECT count(*) AS n FROM forecast_table('sales', key => 'store', ts => 'ts', value => 'amount', horizon => 2)"
EVENTS = ("SELECT count(*) AS n FROM anomaly_events('sales', key => 'store', ts => 'ts', value => '"
          + ", ".join(f"c{i}" for i in range(64)) + "')")


def test_planning_work_is_bounded_before_it_is_done(client):
    """A few bytes of table function calls expand a thousandfold, and planning is out of reach of
    the time limit and of cancels (plan/size.py): 40 calls in 5 kB planned for 12 s."""
    with pytest.raises(pa.ArrowInvalid, match="at most 8 table functions .* this one calls 9"):
        run(client, " UNION ALL ".join([FORECAST] * 9))
    with pytest.raises(pa.ArrowInvalid, match="plans to more than 20,000 SQL nodes"):
        run(client, " UNION ALL ".join([EVENTS] * 5))
    assert run(client, " UNION ALL ".join([FORECAST] * 8)).column("n").to_pylist() == [6] * 8


def test_oversized_and_overdeep_queries_are_clean_errors(client):
    with pytest.raises(pa.ArrowInvalid, match="over 262144 bytes"):
        run(client, "SELECT 1 IN (" + ", ".join(map(str, range(60000))) + ")")
    with pytest.raises(pa.ArrowInvalid, match="too deeply|depth"):
        run(client, "SELECT " + " + ".join(["1"] * 900))


def test_parameter_uploads_are_bounded_and_need_a_known_handle(client):
    from flight_lstm.server import flight_sql_messages as m

    def put(handle, batches):
        command = m.CommandPreparedStatementQuery(prepared_statement_handle=handle)
        writer, reader = client.do_put(flight.FlightDescriptor.for_command(m.pack(command)), batches[0].schema)
        for b in batches:
            writer.write_batch(b)
        writer.done_writing()
        reader.read()
        writer.close()

    one = pa.record_batch([pa.array([1])], names=["p"])
    with pytest.raises(pa.ArrowInvalid, match="unknown or expired prepared statement"):
        put(b'{"id": "made-up", "sql": "SELECT ?"}', [one])
    request = m.ActionCreatePreparedStatementRequest(query="SELECT ? AS x")
    result = list(client.do_action(flight.Action("CreatePreparedStatement", m.pack(request))))[0].body.to_pybytes()
    handle = m.unpack("ActionCreatePreparedStatementResult",
                      m.flight_sql_type(result)[1]).prepared_statement_handle
    with pytest.raises(pa.ArrowInvalid, match="at most 2,097,152 bytes"):
        put(handle, [pa.record_batch([pa.array(["x" * 3_000_000])], names=["p"])])
    with pytest.raises(pa.ArrowInvalid, match="at most 10,000 rows"):
        put(handle, [pa.record_batch([pa.array(range(10_001))], names=["p"])])
    put(handle, [one, one])  # several rows: the query runs once per row
    with pytest.raises(pa.ArrowInvalid, match="unknown or expired"):  # a handle whose SQL was edited
        put(handle.replace(b"SELECT ? AS x", b"SELECT ? AS y"), [one])
    put(handle, [one])
    # All of a user's statements together are bounded too: 256 statements of a full bind each had
    # held 1.1 GB for ten minutes (decimals, counted at a quarter of what they hold).
    full = pa.record_batch([pa.array(range(10_000))], names=["p"])  # 1.8 MB as Python objects
    handles = []
    try:
        with pytest.raises(flight.FlightUnavailableError, match="this user's prepared statements hold"):
            for _ in range(30):
                result = list(client.do_action(flight.Action("CreatePreparedStatement", m.pack(request))))[0]
                handles.append(m.unpack("ActionCreatePreparedStatementResult",
                                        m.flight_sql_type(result.body.to_pybytes())[1]).prepared_statement_handle)
                put(handles[-1], [full])
    finally:  # the session's server serves other tests: give the room back
        for h in handles:
            close = m.pack(m.ActionClosePreparedStatementRequest(prepared_statement_handle=h))
            list(client.do_action(flight.Action("ClosePreparedStatement", close)))
    assert 15 <= len(handles) <= 20  # about 32 MB of 1.8 MB binds


@pytest.mark.parametrize("sql", [
    "SELECT k, forecast(list(v ORDER BY t), 8760) AS f FROM "
    "(SELECT i % 300 AS k, i AS t, sin(i) AS v FROM range(120000) r(i)) GROUP BY k",
    "SELECT max(sentiment(review || repeat(' fine', i % 50))) AS s FROM reviews, range(3000) r(i)",
], ids=["forecast per group", "sentiment in an aggregate"])
def test_a_model_called_by_duckdb_stops_at_the_time_limit(lake, sql):
    """DuckDB calls these operators on its own worker threads, mid-query: the model still checks
    its query's budget between inference batches, and the client is told the time ran out."""
    srv, uri = serve(lake, query_seconds=0.5)
    try:
        with flight.connect(uri) as c:
            started = time.monotonic()
            with pytest.raises(flight.FlightTimedOutError, match="time limit of 0.5 s"):
                run(c, sql)
            assert time.monotonic() - started < 2.5  # unlimited, each runs for several seconds
            assert run(c, "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42
    finally:
        srv.shutdown()


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":"))) * 1024


def _data_cap(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        return int(next(line.split()[3] for line in f if line.startswith("Max data size")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's /proc entry")
def test_a_value_built_outside_duckdbs_accounting_hits_the_process_cap(lake):
    """DuckDB's --memory-limit does not count one expression's value: `len(range(100000000))`
    once took the server past 6 GB under a 1 GB limit. The data-segment cap fails that query
    alone, early, and the server serves on."""
    proc = subprocess.Popen([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}",
                             "--port", "0", "--memory-limit", "300MB"], stdout=subprocess.PIPE, text=True)
    try:
        uri = proc.stdout.readline().strip().rsplit(" on ", 1)[1]
        cap = _data_cap(proc.pid)
        assert _status(proc.pid, "VmData") + parse_size("300MB") < cap  # the default: now + limit + headroom
        with flight.connect(uri) as c:
            try:  # needs about 1 GB more: right, or out of memory, whichever the heap allows
                assert run(c, "SELECT len(range(100000000)) AS n").column("n")[0].as_py() == 100_000_000
            except flight.FlightUnavailableError as e:
                assert "Out of Memory" in str(e)
            for sql in ("SELECT len(range(400000000)) AS n", "SELECT length(repeat('x', 3000000000)) AS n"):
                with pytest.raises(flight.FlightUnavailableError, match="Out of Memory"):
                    run(c, sql)
            assert run(c, "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42
            # The room comes back: DuckDB's allocator had kept the freed address space mapped, so
            # one such query left the cap all but reached, and then every model call failed.
            assert _status(proc.pid, "VmData") < cap - parse_size("1GB")
            with pytest.raises(flight.FlightUnavailableError, match="Out of Memory"):
                run(c, "SELECT len(list_sort(list_reverse(range(300000000)))) AS n")
            assert _status(proc.pid, "VmData") < cap - parse_size("1GB")
            assert run(c, "SELECT sum(sentiment(review)) AS s FROM reviews").num_rows == 1
            forecast = run(c, "SELECT len(forecast(list(i::DOUBLE ORDER BY i), 24)) AS n FROM range(500) t(i)")
            assert forecast.column("n")[0].as_py() == 24
        assert _status(proc.pid, "VmHWM") < cap
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_spilling_to_disk_is_bounded_and_kept_out_of_the_working_directory(lake, tmp_path):
    """DuckDB spills what outgrows its memory to `.tmp` in the working directory, up to 90% of the
    disk's free space: a few large sorts could fill the disk. `--max-spill` bounds it."""
    proc = subprocess.Popen([sys.executable, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}",
                             "--port", "0", "--memory-limit", "100MB", "--max-spill", "20MB"],
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        uri = proc.stdout.readline().strip().rsplit(" on ", 1)[1]
        with flight.connect(uri) as c:
            with pytest.raises(flight.FlightUnavailableError, match="Out of Memory"):
                run(c, "SELECT count(*) AS n FROM (SELECT i, md5(i::VARCHAR) AS m FROM range(5000000) t(i) ORDER BY m)")
            assert run(c, "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42
        assert not (tmp_path / ".tmp").exists()  # what it spilled went to a directory of its own
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert not (tmp_path / ".tmp").exists()


def test_out_of_memory_outside_any_query_ends_the_process_for_a_restart():
    """Past the cap, a thread that cannot allocate (here: one that needs 1 GB more) is not a query's
    error: the process says so and exits 75, where it had served on wedged."""
    code = ("import threading, time\n"
            "from flight_lstm.engine.limits import cap_memory, data_segment\n"
            "cap_memory(None, str(data_segment() + 200_000_000))\n"
            "threading.Thread(target=lambda: bytearray(1_000_000_000)).start()\n"
            "time.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 75 and "out of memory outside any query" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("text, size", [("4GB", 4_000_000_000), ("4GiB", 4 << 30), ("512 MB", 512_000_000),
                                        ("1.5kib", 1536), ("100000", 100_000), ("2g", 2_000_000_000)])
def test_sizes_read_as_duckdb_writes_them(text, size):
    assert parse_size(text) == size
