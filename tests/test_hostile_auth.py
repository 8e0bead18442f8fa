"""A security probe's findings on auth, replayed with real clients against a real server on a loopback
port: revoked users keep no tokens, prepared statements answer only their user, timing does not tell
which users exist, and password guessing and login floods are throttled."""
import contextlib
import json
import logging
import statistics
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_lstm.server import FlightLSTMServer
from flight_lstm.server import auth
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.server.auth import BasicBearerAuth, LoginThrottle, Tokens, Users
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

PASSWORD = "correct horse battery"
UNKNOWN = "unknown or expired prepared statement"


@pytest.fixture
def users(tmp_path):
    users = Users(tmp_path / "users.json")
    users.add("ana", PASSWORD)
    users.add("ben", PASSWORD)
    return users


@pytest.fixture
def serve(lake, users):
    servers = []

    def start(**options) -> str:
        server = FlightLSTMServer(Service(DuckDBSource(lake)), "grpc://127.0.0.1:0",
                                  auth=BasicBearerAuth(users, Tokens(), **options))
        threading.Thread(target=server.serve, daemon=True).start()
        servers.append(server)
        return f"grpc://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.shutdown()


def login(uri: str, user: str, password: str = PASSWORD) -> flight.FlightCallOptions:
    with flight.connect(uri) as client:
        return flight.FlightCallOptions(headers=[client.authenticate_basic_token(user, password)])


def count(uri: str, options: flight.FlightCallOptions) -> int:
    with flight.connect(uri) as client:
        info = client.get_flight_info(flight.FlightDescriptor.for_command("SELECT count(*) FROM reviews"), options)
        return client.do_get(info.endpoints[0].ticket, options).read_all().column(0)[0].as_py()


def test_removing_a_user_or_changing_a_password_revokes_tokens_at_once(serve, users):
    uri = serve()
    ana, ben = login(uri, "ana"), login(uri, "ben")
    assert count(uri, ana) == count(uri, ben) > 0
    assert users.load() is users.load()  # unchanged file: parsed once, then one stat per call

    remaining = {k: v for k, v in users.load().items() if k != "ben"}
    users.path.with_name("edit").write_text(json.dumps(remaining))  # an operator's edit, not Users.add
    users.path.with_name("edit").replace(users.path)
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid or expired"):
        count(uri, ben)
    assert count(uri, ana) > 0

    users.add("ana", "a new password 2", replace=True)
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid or expired"):
        count(uri, ana)  # issued before the change
    with pytest.raises(flight.FlightUnauthenticatedError):
        login(uri, "ana")
    assert count(uri, login(uri, "ana", "a new password 2")) > 0


def _prepare(client, options, sql: str) -> bytes:
    request = messages.pack(messages.ActionCreatePreparedStatementRequest(query=sql))
    (result,) = client.do_action(flight.Action("CreatePreparedStatement", request), options)
    _, value = messages.flight_sql_type(result.body.to_pybytes())
    return messages.unpack("ActionCreatePreparedStatementResult", value).prepared_statement_handle


def _query(handle: bytes) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(messages.pack(messages.CommandPreparedStatementQuery(
        prepared_statement_handle=handle)))


def _bind(client, options, handle: bytes, value: int) -> None:
    writer, reader = client.do_put(_query(handle), pa.schema([("p", pa.int64())]), options)
    writer.write_table(pa.table({"p": [value]}))
    writer.done_writing()
    reader.read()
    writer.close()


def _close(client, options, handle: bytes) -> None:
    request = messages.pack(messages.ActionClosePreparedStatementRequest(prepared_statement_handle=handle))
    list(client.do_action(flight.Action("ClosePreparedStatement", request), options))


def _rows(client, options, handle: bytes) -> list:
    info = client.get_flight_info(_query(handle), options)
    return client.do_get(info.endpoints[0].ticket, options).read_all().column(0).to_pylist()


def test_a_prepared_statement_answers_only_the_user_who_prepared_it(serve):
    uri = serve()
    ana, ben = login(uri, "ana"), login(uri, "ben")
    with flight.connect(uri) as client:
        handle = _prepare(client, ana, "SELECT id FROM reviews WHERE id = ?")
        _bind(client, ana, handle, 3)
        ticket = client.get_flight_info(_query(handle), ana).endpoints[0].ticket
        assert client.do_get(ticket, ana).read_all().column(0).to_pylist() == [3]

        never = json.dumps({"id": uuid.uuid4().hex, "sql": "SELECT 1"}).encode()
        for attempt in [lambda h: client.get_flight_info(_query(h), ben),
                        lambda h: client.do_get(flight.Ticket(_query(h).command), ben).read_all(),
                        lambda h: _bind(client, ben, h, 4)]:
            with pytest.raises(pa.ArrowInvalid, match=UNKNOWN) as foreign:
                attempt(handle)
            with pytest.raises(pa.ArrowInvalid, match=UNKNOWN) as unknown:
                attempt(never)
            assert str(foreign.value) == str(unknown.value)  # a foreign handle looks like one never made
        _close(client, ben, handle)  # as closing an unknown handle: nothing, and ana's stays open
        _close(client, ben, never)
        assert client.do_get(ticket, ana).read_all().column(0).to_pylist() == [3]  # ben changed nothing

        _close(client, ana, handle)
        with pytest.raises(pa.ArrowInvalid, match=UNKNOWN):
            _rows(client, ana, handle)


def test_an_unknown_user_takes_as_long_as_a_wrong_password(serve):
    uri = serve(throttle=LoginThrottle(allowed=100))
    times = {"ana": [], "nobody": []}
    with flight.connect(uri) as client:
        for _ in range(15):
            for user in times:
                start = time.perf_counter()
                with pytest.raises(flight.FlightUnauthenticatedError, match="invalid user name or password"):
                    client.authenticate_basic_token(user, "not the password")
                times[user].append(time.perf_counter() - start)
    known, unknown = statistics.median(times["ana"]), statistics.median(times["nobody"])
    assert 0.5 < unknown / known < 2, times


@pytest.fixture
def checks(monkeypatch):
    """Counts the password checks the server runs, and the most that ran at once."""
    seen = {"checks": 0, "running": 0, "most": 0}
    lock, check = threading.Lock(), auth.check_password

    def counted(password, stored):
        with lock:
            seen["checks"] += 1
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
        try:
            return check(password, stored)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(auth, "check_password", counted)
    return seen


def test_failed_logins_are_throttled_per_user_and_logged(serve, checks, caplog):
    caplog.set_level(logging.INFO, logger="flight_lstm.server")
    uri = serve(throttle=LoginThrottle(allowed=5, window=2.0))
    for user in ["ana", "nobody"]:  # a known and an unknown name fare the same
        for _ in range(5):
            with pytest.raises(flight.FlightUnauthenticatedError):
                login(uri, user, "guess 1234")
        before = checks["checks"]
        with pytest.raises(flight.FlightUnavailableError, match=r"too many failed logins.*retry in [12] s"):
            login(uri, user, PASSWORD)  # even the right password, without a check
        assert checks["checks"] == before
    assert count(uri, login(uri, "ben")) > 0  # others log in meanwhile
    lines = [r.getMessage() for r in caplog.records if r.name == "flight_lstm.server"]
    assert sum(" failed: " in line for line in lines) == 10 and sum(" refused: " in line for line in lines) == 2
    assert "guess 1234" not in caplog.text and PASSWORD not in caplog.text

    time.sleep(2.0)
    options = login(uri, "ana")  # the window has passed
    for _ in range(4):
        with pytest.raises(flight.FlightUnauthenticatedError):
            login(uri, "ana", "guess 1234")
    login(uri, "ana")  # a success clears the count: four more failures are not yet too many
    for _ in range(4):
        with pytest.raises(flight.FlightUnauthenticatedError):
            login(uri, "ana", "guess 1234")
    assert count(uri, login(uri, "ana")) == count(uri, options)


def test_a_login_flood_runs_a_bounded_number_of_checks(serve, checks):
    uri = serve(checks_at_once=1, check_wait=0.1)
    refusals = []

    def guess(i):
        with pytest.raises(flight.FlightError) as e:
            login(uri, f"flood{i}", "guess 1234")  # a new name each: no per-user throttle
        refusals.append(str(e.value))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert checks["most"] == 1 and len(refusals) == 12
    assert any("too many logins at once; retry in 1 s" in r for r in refusals), refusals
    assert count(uri, login(uri, "ana")) > 0


def test_a_login_flood_leaves_queries_their_speed(serve):
    """New names each guess (so no per-user throttle): only the bounded checks slow queries down."""
    uri = serve(throttle=LoginThrottle(allowed=10**6))
    options, stop = login(uri, "ana"), threading.Event()
    sql = flight.FlightDescriptor.for_command("SELECT count(*) FROM reviews, range(20000)")

    def median_query(client) -> float:
        times = []
        for _ in range(15):
            start = time.perf_counter()
            client.do_get(client.get_flight_info(sql, options).endpoints[0].ticket, options).read_all()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def flood(i):
        with flight.connect(uri) as client:
            n = 0
            while not stop.is_set():
                n += 1
                with contextlib.suppress(flight.FlightError):  # refused: unknown, or busy
                    client.authenticate_basic_token(f"flood{i}.{n}", "guess 1234")

    threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(16)]
    with flight.connect(uri) as client:
        idle = median_query(client)
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        flooded = median_query(client)
    stop.set()
    for thread in threads:
        thread.join()
    assert flooded < 4 * idle, (flooded, idle)  # unbounded, 16 checks at once made it 10 to 15 times


def test_throttle_memory_is_bounded():
    """Names come from clients: a spray of them keeps the newest `tracked`, each as a digest."""
    throttle = LoginThrottle(allowed=2, window=0.2, tracked=3)
    for i in range(10):
        throttle.failed(f"name{i}")
    assert len(throttle._failures) == 3 and throttle.wait("name9") == 0
    throttle.failed("name9")
    assert throttle.wait("name9") > 0
    time.sleep(0.25)
    throttle.failed("new")  # names without failures in the window are dropped
    assert len(throttle._failures) == 1 and throttle.wait("name9") == 0
