"""Calls in flight are bounded: every call holds a server thread (and its 8 MiB stack, counted
against the memory cap) for as long as its client keeps it open. A client holding silent streams
gets its share and no more, refused at once with UNAVAILABLE, while other users, other addresses
and the health action are served; counts go back to zero however calls end; a stream whose client
stops sending or reading loses its thread, not only its query slot."""
from __future__ import annotations

import resource
import socket
import threading
import time
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import run
from raw_http2 import SilentStreams
from prometheus_client import REGISTRY

from flight_lstm import cli
from flight_lstm.engine.limits import Limits
from flight_lstm.server import FlightLSTMServer, calls
from flight_lstm.server import flight_sql_messages as m
from flight_lstm.server.auth import BasicBearerAuth, Tokens, Users
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

EXCHANGE = flight.FlightDescriptor.for_command("SELECT * FROM input")
SCHEMA = pa.schema([("x", pa.int64())])
BIG = b"SELECT range AS i, repeat('x', 100) AS pad FROM range(50000000)"
PASSWORDS = {"ana": "correct horse battery", "mallory": "mallory's password"}


def users_file(tmp_path) -> Users:
    users = Users(tmp_path / "users.json")
    for user, password in PASSWORDS.items():
        users.add(user, password)
    return users


@contextmanager
def serving(lake, tmp_path=None, location="grpc://127.0.0.1:0", limits=None, **options):
    """A server, and a list to put its clients and streams in: streams are cancelled and clients
    closed before it shuts down (which waits for every call in flight), even when the test fails."""
    if tmp_path is not None:
        options["auth"] = BasicBearerAuth(users_file(tmp_path), Tokens())
    server = FlightLSTMServer(Service(DuckDBSource(lake), limits=limits or Limits()), location, **options)
    threading.Thread(target=server.serve, daemon=True).start()
    clients: list[flight.FlightClient] = []
    try:
        yield server, clients
    finally:
        for opened in reversed(clients):
            if isinstance(opened, flight.FlightClient):
                opened.close()
            else:  # a stream; closing its client alone leaves it open
                try:
                    opened.cancel()
                except pa.ArrowException:
                    pass
        server.shutdown()


def connect(clients: list, server, host: str = "127.0.0.1") -> flight.FlightClient:
    client = flight.connect(f"grpc://{host}:{server.port}")
    clients.append(client)
    return client


def eventually(check, seconds: float = 30.0):
    """Poll until `check()` is true; generous, since the machine may be busy."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def held(server) -> int:
    return server.calls.counts()["calls"]


def login(client, user) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[client.authenticate_basic_token(user, PASSWORDS[user])])


def exchange(clients: list, client, options=None, descriptor=EXCHANGE):
    writer, reader = client.do_exchange(descriptor, options)
    clients.append(reader)
    return writer, reader


class Closing:
    """A DoPut's writer, to end at the test's end as a stream's reader is cancelled."""

    def __init__(self, writer):
        self.writer = writer

    def cancel(self):
        self.writer.close()


def refused(clients: list, client, pattern: str, options=None) -> None:
    """An exchange refused: at its start (a middleware's refusal) or at its first read (the
    handler's, which knows the client's address)."""
    with pytest.raises(flight.FlightUnavailableError, match=pattern):
        writer, reader = exchange(clients, client, options)
        writer.begin(SCHEMA)
        writer.done_writing()
        reader.read_all()


def health(client, options=None) -> str:
    body = list(client.do_action(flight.Action("health", b""), options))[0].body.to_pybytes()
    return body.decode()


def refusals(limit: str) -> float:
    """Calls refused so far for reaching `limit`, as the metrics tell."""
    return REGISTRY.get_sample_value("flight_lstm_calls_refused_total", {"limit": limit}) or 0.0


def threads() -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


def settled_threads() -> int:
    """This process's threads once the count holds still for half a second (an earlier test's
    server lets its threads go for a while after it stopped)."""
    deadline, last = time.monotonic() + 10, threads()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = threads()
        if now == last:
            return now
        last = now
    return last


def test_a_users_silent_exchanges_past_their_share_are_refused_while_others_are_served(lake, tmp_path):
    with serving(lake, tmp_path, max_calls=16, max_calls_per_user=4) as (server, clients):
        attacker = connect(clients, server)
        options = login(attacker, "mallory")
        silent = [exchange(clients, attacker, options) for _ in range(4)]  # never begun
        eventually(lambda: server.calls.counts()["callers"].get(("user", "mallory")) == 4)
        for _ in range(3):
            refused(clients, attacker, "too many calls in flight for this user", options)
        with pytest.raises(flight.FlightUnavailableError, match="for this user"):
            run_as(attacker, options, "SELECT 1 AS x")
        other = connect(clients, server)
        assert run_as(other, login(other, "ana"), "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42
        assert '"status": "ok"' in health(other)  # anonymous, as a load balancer asks
        assert held(server) == 4
        attacker.close()  # the attacker goes: its calls end, and every count with them
        del silent
        eventually(lambda: held(server) == 0)
        assert server.calls.counts() == {"calls": 0, "streams": 0, "callers": {}}
        back = connect(clients, server)
        assert run_as(back, login(back, "mallory"), "SELECT 7 AS x").column("x")[0].as_py() == 7


def run_as(client, options, sql: str) -> pa.Table:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql), options)
    return client.do_get(info.endpoints[0].ticket, options).read_all()


def test_without_auth_one_address_gets_its_share_and_other_addresses_are_served(lake):
    """The finding: one connection, hundreds of silent exchanges. Without auth the caller is the
    client's address (pyarrow's middleware is not told it; the handler's context is). Two
    addresses on one machine: IPv4's and IPv6's loopback, to a server listening on both."""
    try:
        socket.create_connection(("::1", 9), timeout=1).close()
    except ConnectionRefusedError:
        pass  # IPv6 loopback works (nothing listens on port 9)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with serving(lake, location="grpc://[::]:0", max_calls=32, max_calls_per_user=4) as (server, clients):
        attacker = connect(clients, server)
        before = refusals("address") + refusals("streams")
        silent = [exchange(clients, attacker) for _ in range(40)]
        # The 36 beyond the share are refused: for the address once their handler runs, or, while a
        # burst's handlers have yet to run, for the streams' share of the total (28 here).  The
        # refusal counter is the process's (Prometheus), so another test's server winding down may
        # add to it: at least 36, and 4 held.
        eventually(lambda: refusals("address") + refusals("streams") - before >= 36 and held(server) == 4)
        assert server.calls.counts()["callers"] == {("address", "127.0.0.1"): 4}
        refused(clients, attacker, "too many calls in flight for your address")
        other = connect(clients, server, "[::1]")
        assert run(other, "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42
        assert '"status": "ok"' in health(other)
        same = connect(clients, server)
        assert '"status": "ok"' in health(same)  # health is kept even for an address at its limit
        with pytest.raises(flight.FlightUnavailableError, match="for your address"):
            run(same, "SELECT 1 AS x")
        attacker.close()
        del silent
        eventually(lambda: held(server) == 0)
        assert run(connect(clients, server), "SELECT 7 AS x").column("x")[0].as_py() == 7


def test_streams_leave_room_for_quick_calls_when_every_stream_is_taken(lake):
    """Past the streams' share of the total (all but an eighth), streams are refused and the calls
    that answer at once still are: the health action, GetFlightInfo."""
    with serving(lake, max_calls=8, max_calls_per_user=8) as (server, clients):
        attacker, other = connect(clients, server), connect(clients, server)
        silent = [exchange(clients, attacker) for _ in range(7)]
        eventually(lambda: server.calls.counts()["streams"] == 7)
        refused(clients, attacker, "streams are in flight")
        assert '"status": "ok"' in health(other)
        info = other.get_flight_info(flight.FlightDescriptor.for_command("SELECT 1 AS x"))
        assert info.schema.names == ["x"]
        with pytest.raises(flight.FlightUnavailableError, match="streams are in flight"):
            other.do_get(info.endpoints[0].ticket).read_all()
        attacker.close()
        del silent
        eventually(lambda: held(server) == 0)


def test_counts_come_back_however_calls_end(lake, tmp_path):
    """Refused, failed, cancelled, abandoned, refused at login: none leaves a count behind."""
    with serving(lake, tmp_path, max_calls=16, max_calls_per_user=4) as (server, clients):
        client = connect(clients, server)
        options = login(client, "ana")
        with pytest.raises(pa.ArrowInvalid):
            run_as(client, options, "SELECT no_such_column FROM reviews")  # the handler fails
        with pytest.raises(flight.FlightUnauthenticatedError):
            run_as(client, flight.FlightCallOptions(headers=[(b"authorization", b"Bearer forged")]),
                   "SELECT 1")  # refused by the login check, inside the count
        with pytest.raises(flight.FlightUnauthenticatedError):
            client.authenticate_basic_token("ana", "wrong password")
        stream = client.do_get(flight.Ticket(BIG), options)
        clients.append(stream)
        stream.read_chunk()
        stream.cancel()  # the client cancels mid-stream
        writer, reader = exchange(clients, client, options,
                                  flight.FlightDescriptor.for_command("SELECT x + 1 AS y FROM input"))
        writer.begin(SCHEMA)
        writer.write_batch(pa.record_batch([pa.array([1])], schema=SCHEMA))
        assert reader.read_chunk().data.column(0).to_pylist() == [2]
        writer.done_writing()
        reader.read_all()
        # Every call above has ended, the cancelled stream's too: still counted (a loaded machine ends it
        # slowly), it took one of the user's 4, and once it ended only 3 were held (a CI run failed so).
        eventually(lambda: held(server) == 0)
        silent = [exchange(clients, client, options) for _ in range(6)]  # 4 held, 2 refused
        eventually(lambda: held(server) == 4)
        client.close()  # the client goes with its streams open
        del silent
        eventually(lambda: held(server) == 0)
        assert server.calls.counts() == {"calls": 0, "streams": 0, "callers": {}}


def test_an_exchange_that_stops_sending_gives_its_thread_back(lake):
    """Its query's slot frees after --idle-seconds (as before: a client back by then reads why);
    after a grace (as long again, at least 10 s) the connection is closed, the blocked read returns
    and the thread with it. pyarrow has no server-side cancel: nothing else ends a read the client
    never answers."""
    with serving(lake, limits=Limits(query_seconds=None, idle_seconds=1.0)) as (server, clients):
        client = connect(clients, server)
        started = time.monotonic()
        before = settled_threads()
        streams = [exchange(clients, client) for _ in range(8)]
        for writer, _ in streams:
            writer.begin(SCHEMA)  # the schema, then nothing (a writer dropped would end its stream)
        never_begun = exchange(clients, client)  # not even a schema
        eventually(lambda: threads() >= before + 9, 10)  # a thread each
        during = threads()
        eventually(lambda: threads() <= during - 8, 60)  # the threads are back, not just the slots
        assert 11.0 <= time.monotonic() - started < 40  # --idle-seconds, then a grace of at least 10 s
        # Each call ends: its handler returned. Its count goes back as pyarrow completes the call, a
        # moment after its thread may be counted gone (a clean-clone CI run saw 1 still held).
        eventually(lambda: held(server) == 0, 10)
        writer, reader = streams[0]
        with pytest.raises(flight.FlightError):  # the silent client learns its stream is gone
            writer.write_batch(pa.record_batch([pa.array([1])], schema=SCHEMA))
            writer.done_writing()
            reader.read_all()
        assert run(client, "SELECT 7 AS x").column("x")[0].as_py() == 7  # its channel reconnects
        del never_begun


def test_a_result_never_read_gives_its_thread_back(lake):
    """A DoGet whose client stops reading blocks the server's write once gRPC's window fills; its
    connection is closed too, and the thread returns."""
    with serving(lake, limits=Limits(query_seconds=None, idle_seconds=1.0)) as (server, clients):
        client = connect(clients, server)
        before = settled_threads()
        for _ in range(4):
            stream = client.do_get(flight.Ticket(BIG))
            clients.append(stream)
            stream.read_chunk()  # and never again
        eventually(lambda: threads() >= before + 4, 10)
        during = threads()
        eventually(lambda: server.waits.waiting() == 0 and held(server) == 0, 60)  # the calls ended
        eventually(lambda: threads() <= during - 3, 10)  # and their threads are back


def test_a_parameter_upload_that_stops_gives_its_thread_back(lake):
    with serving(lake, limits=Limits(query_seconds=None, idle_seconds=1.0)) as (server, clients):
        client = connect(clients, server)
        request = m.ActionCreatePreparedStatementRequest(query="SELECT ? AS x")
        result = list(client.do_action(flight.Action("CreatePreparedStatement", m.pack(request))))[0].body.to_pybytes()
        handle = m.unpack("ActionCreatePreparedStatementResult", m.flight_sql_type(result)[1]).prepared_statement_handle
        command = m.pack(m.CommandPreparedStatementQuery(prepared_statement_handle=handle))
        before = settled_threads()
        for _ in range(4):
            writer, _ = client.do_put(flight.FlightDescriptor.for_command(command), pa.schema([("p", pa.int64())]))
            clients.append(Closing(writer))
            writer.write_batch(pa.record_batch([pa.array([1])], names=["p"]))  # one row, then silence
        eventually(lambda: threads() >= before + 4, 10)
        during = threads()
        eventually(lambda: threads() <= during - 3, 60)
        assert held(server) == 0


def test_a_failure_inside_the_middleware_is_a_clean_error(lake, tmp_path, monkeypatch):
    """pyarrow sends any exception but a FlightError from a middleware with its Python traceback;
    running out of memory there (thread stacks at the cap) reached clients as one."""
    auth = BasicBearerAuth(users_file(tmp_path), Tokens())
    with serving(lake, auth=auth) as (server, clients):
        client = connect(clients, server)
        options = login(client, "ana")

        def out_of_memory(info, headers):
            raise MemoryError()

        monkeypatch.setattr(auth, "start_call", out_of_memory)
        with pytest.raises(flight.FlightUnavailableError, match="ran out of memory") as refused:
            run_as(client, options, "SELECT 1")
        assert "Traceback" not in str(refused.value)

        def broken(info, headers):
            raise ValueError("the users file is not JSON")

        monkeypatch.setattr(auth, "start_call", broken)
        with pytest.raises(flight.FlightInternalError, match="internal error") as failed:
            run_as(client, options, "SELECT 1")
        assert "Traceback" not in str(failed.value) and "JSON" not in str(failed.value)
        monkeypatch.undo()
        assert run_as(client, options, "SELECT 7 AS x").column("x")[0].as_py() == 7
        assert held(server) == 0


def test_a_call_pyarrow_drops_without_ending_gives_its_count_back():
    """A start that fails after this middleware's (inside pyarrow's own wrapper) never reaches
    call_completed; the count goes when pyarrow lets go of the call's middleware."""
    from flight_lstm.server import calls

    counter = calls.InFlight(None, max_calls=2, per_user=2)
    info = type("Info", (), {"method": flight.FlightMethod.DO_EXCHANGE})()
    call = counter.start_call(info, {})
    assert counter.counts()["calls"] == 1
    del call
    assert counter.counts() == {"calls": 0, "streams": 0, "callers": {}}
    call = counter.start_call(info, {})
    call.call_completed(None)
    call.call_completed(None)  # once only
    del call
    assert counter.counts()["calls"] == 0


@pytest.mark.parametrize("peer, caller", [
    ("ipv4:203.0.113.7:51234", "203.0.113.7"),
    ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"),  # one host holds a whole /64
    ("ipv6:%5B2001:db8:1:2:ffff::1%5D:443", "2001:db8:1:2::/64"),
    ("ipv6:[::ffff:198.51.100.1]:80", "198.51.100.1"),
    ("unix:/run/flight.sock", "unix"),
])
def test_callers_by_address(peer, caller):
    from flight_lstm.server import calls

    assert calls.address_of(peer) == caller


def test_the_default_is_what_the_memory_cap_affords(monkeypatch):
    """A quarter of the room under RLIMIT_DATA, at a thread's stack plus 1 MiB a call, within
    16..256; the share of one caller a quarter of that."""
    from flight_lstm.server import calls

    stack = calls.thread_stack_bytes()
    assert stack >= 1 << 16
    now = 2 << 30
    monkeypatch.setattr(calls, "data_segment", lambda: now)
    monkeypatch.setattr(calls, "_threads_left", lambda: None)
    monkeypatch.setattr(calls.resource, "getrlimit", lambda which: (now + (2 << 30), resource.RLIM_INFINITY))
    expected = (2 << 30) // 4 // (stack + calls.CALL_BYTES)
    assert calls.afforded_calls() == max(16, min(256, expected))
    monkeypatch.setattr(calls.resource, "getrlimit", lambda which: (now + (100 << 20), resource.RLIM_INFINITY))
    assert calls.afforded_calls() == 16
    counter = calls.InFlight(None, max_calls=64)
    assert (counter.max_calls, counter.per_user, counter.reserve) == (64, 16, 8)


def test_serve_refuses_a_limit_below_one(capsys):
    with pytest.raises(SystemExit, match="--max-calls-per-user must be at least 1"):
        cli.main(["serve", "--source", "duckdb:///nowhere.db", "--max-calls-per-user", "0"])


def test_streams_whose_first_message_never_comes_lose_their_connection_and_running_calls_stay(lake):
    """No handler runs for a stream before its first message, so no address is known for it and
    the per-address share cannot hold it: 30 such streams from a hand-made HTTP/2 client took
    every stream slot, for as long as it liked. Past the silent-client deadline, every connection
    on which no call runs is shut down; a client whose exchange keeps going is not touched."""
    with serving(lake, limits=Limits(query_seconds=None, idle_seconds=1.0), max_calls=32) as (server, clients):
        client = connect(clients, server)
        writer, reader = exchange(clients, client)
        writer.begin(SCHEMA)
        sent, stop = [], threading.Event()

        def keep_sending():  # a live call on its own connection through the whole test
            while not stop.is_set():
                writer.write_batch(pa.record_batch([pa.array([len(sent)])], schema=SCHEMA))
                sent.append(reader.read_chunk().data.column(0)[0].as_py())
                time.sleep(0.3)

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        attacker = SilentStreams("127.0.0.1", server.port, 30)
        try:
            eventually(lambda: server.calls.counts()["streams"] == 28, 10)  # every stream slot: 32 less 4 for quick calls
            with pytest.raises(flight.FlightUnavailableError, match="streams are in flight"):
                connect(clients, server).do_get(flight.Ticket(b"SELECT 42 AS x")).read_all()
            assert attacker.closed.wait(30)  # --idle-seconds, a grace of 10 s, a tick
            eventually(lambda: server.calls.counts()["streams"] == 1, 10)  # only the live exchange
            assert run(connect(clients, server), "SELECT 42 AS x").column("x").to_pylist() == [42]
        finally:
            attacker.close()
            stop.set()
            sender.join(10)
        assert sent == list(range(len(sent))) and len(sent) > 30  # never cut: every batch came back
        writer.done_writing()


@pytest.mark.parametrize("peer, endpoint", [
    ("ipv4:203.0.113.7:51234", ("203.0.113.7", 51234)),
    ("ipv6:[::ffff:198.51.100.1]:80", ("198.51.100.1", 80)),  # as the socket of a dual-stack server reads it
    ("ipv6:%5B2001:db8::1%5D:443", ("2001:db8::1", 443)),
    ("unix:/run/flight.sock", None),
])
def test_a_peer_is_matched_to_its_socket_as_the_socket_reads_it(peer, endpoint):
    from flight_lstm.server import calls

    found = calls._endpoint(peer)
    assert (found if found is None else (str(found[0]), found[1])) == endpoint


# An internal error of DuckDB's, reached by a cast at its last second: it invalidates the database.
BREAKS = "SELECT (('294247-01-10 04:00:54.' || i)::TIMESTAMP_MS)::TIMESTAMP_S AS t FROM range(775, 776) t(i)"


def test_an_internal_error_counts_even_when_its_query_was_stopping(lake):
    """Round 15: a client that cancelled its own breaking query just before the break (or let its
    deadline pass) got "cancelled", which is not counted: 11 renewals in 40 s, 1 counted. The break
    invalidated the database all the same, so it stays DuckDB's internal error, and is counted."""
    import duckdb

    from flight_lstm.engine.errors import translated_errors
    from flight_lstm.engine.limits import Budget
    from flight_lstm.engine.running import stopped_by
    from flight_lstm.errors import DuckDBFailed, QueryCancelled

    source = DuckDBSource(lake)
    for error, expected in ((duckdb.InternalException("INTERNAL Error: broken"), DuckDBFailed),
                            (OSError("INTERNAL Error: broken mid-stream"), DuckDBFailed),
                            (duckdb.InvalidInputException("Invalid Input Error: x"), QueryCancelled)):
        with pytest.raises(expected):
            with stopped_by(Budget(Limits(), cancelled=lambda: True)), translated_errors(source):
                raise error


def test_a_caller_whose_queries_keep_breaking_duckdb_is_refused_for_a_while(lake, tmp_path):
    """Round 14: each such query made the server replace its database, ending every client's running
    queries ("run it again"); one client sending one every 0.2 s ended 41 of 75 other clients'
    streams and all their exchanges. Past BREAKS_ALLOWED within BREAK_WINDOW, its caller is refused
    at once, before any work; other users are served."""
    with serving(lake, tmp_path) as (server, clients):
        attacker = connect(clients, server)
        options = login(attacker, "mallory")
        for _ in range(calls.BREAKS_ALLOWED):
            with pytest.raises(flight.FlightInternalError, match="internal error of its own"):
                run_as(attacker, options, BREAKS)
        with pytest.raises(flight.FlightUnavailableError, match="internal errors of DuckDB's within 60 s"):
            run_as(attacker, options, "SELECT 1 AS x")
        other = connect(clients, server)
        assert run_as(other, login(other, "ana"), "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42



def test_a_burst_of_breaking_queries_stops_at_the_refusal(lake, tmp_path):
    """Round 15: 40 breaking queries sent together all passed the refusal check before the first
    was counted, and each that started after a renewal broke the new database: 6-7 renewals per
    burst. Once the caller is refused, its queries not yet started never start. (Queries running
    together on a database that breaks all meet its error; only a renewal lets a later one break.)"""
    with serving(lake, tmp_path) as (server, clients):
        engine, renewals = server.service.engine, []
        opened = engine._open
        engine._open = lambda: renewals.append(1) or opened()
        attacker = connect(clients, server)
        options = login(attacker, "mallory")
        together, outcomes = threading.Barrier(24), []

        def send():
            together.wait()
            try:
                attacker.do_get(flight.Ticket(BREAKS.encode()), options).read_all()
                outcomes.append("answered")
            except flight.FlightError as e:
                outcomes.append("broke" if "internal error of its own" in str(e) else "stopped")

        senders = [threading.Thread(target=send) for _ in range(24)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(60)
        assert len(outcomes) == 24 and "answered" not in outcomes and "broke" in outcomes
        assert len(renewals) <= calls.BREAKS_ALLOWED
        with pytest.raises(flight.FlightUnavailableError, match="internal errors of DuckDB's within 60 s"):
            run_as(attacker, options, "SELECT 1 AS x")
