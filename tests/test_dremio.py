"""The Dremio source against a stand-in of Dremio's Flight endpoint on a loopback port.

Real Flight, real DuckDB; nothing of ours is mocked. What Dremio does is taken from
/work/shared/notes/dremio-flight.md and reproduced by tests/dremio_standin.py.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dremio_fixtures import DEEP, PAT, PASSWORD, PATHS, ROWS, sample_database  # noqa: E402
from dremio_fixtures import env, standin  # noqa: E402,F401  (fixtures)
from dremio_standin import DremioStandin  # noqa: E402

from flight_lstm.errors import InvalidQuery, QueryCancelled, SourceUnavailable  # noqa: E402
from flight_lstm.engine import Engine  # noqa: E402
from flight_lstm.plan import Plan  # noqa: E402
from flight_lstm.sources import open_source  # noqa: E402
from flight_lstm.dremio.errors import stream_error  # noqa: E402
from flight_lstm.dremio.names import quote_part, split_schema  # noqa: E402
from flight_lstm.sources.dremio import DremioSource  # noqa: E402

def source(standin, query: str = "", scheme: str = "dremio", user: str = "alice@") -> DremioSource:
    src = open_source(f"{scheme}://{user}127.0.0.1:{standin.port}{'?' + query if query else ''}")
    assert isinstance(src, DremioSource)
    return src


def count(src: DremioSource, sql: str = "SELECT count(*) AS n FROM space.folder.reviews") -> int:
    return src.query(sql).read_all().column(0)[0].as_py()


def eventually(fn, seconds: float = 5.0):
    """gRPC reconnects after a short back-off; a query within it finds the source unavailable."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except SourceUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def eventually_true(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def scan_plan(*scans: tuple[str, str], sql: str = "SELECT count(*) AS n FROM _scan_0") -> Plan:
    return Plan(sql=sql, tables=(), operators=frozenset(), scans=tuple(scans))


# ---------------------------------------------------------------- auth, sessions, headers


def test_one_login_then_the_bearer_and_the_cookie_on_every_call(standin, env):
    src = source(standin)
    assert [count(src) for _ in range(5)] == [100] * 5
    assert standin.handshakes == 1
    [token] = standin.tokens
    later = [c for c in standin.calls if c.method != "HANDSHAKE"]
    assert len(later) == 10  # GetFlightInfo + DoGet per query
    assert all(c.headers["authorization"] == [f"Bearer {token}"] for c in later)
    [session] = standin.sessions  # created at the handshake, then sent back as a cookie
    assert all(c.headers.get("cookie") == [f"SESSION_ID={session}"] for c in later)


def test_expired_token_logs_in_again_once_across_threads(standin, env):
    src = source(standin)
    assert count(src) == 100
    standin.expire_tokens()
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: count(src), range(16))) == [100] * 16
    assert standin.handshakes == 2


def test_routing_headers_reach_dremio_with_underscore_names(standin, env):
    src = source(standin, "routing_tag=nightly&routing_queue=High%20Cost&schema=space.folder&routing_engine=e1")
    assert count(src, "SELECT count(*) FROM reviews") == 100  # resolved through the `schema` header
    [session] = standin.sessions.values()
    assert session.headers == {"routing_tag": "nightly", "routing_queue": "High Cost",
                               "schema": "space.folder", "routing_engine": "e1"}
    assert all(c.headers.get("routing_tag") == ["nightly"] for c in standin.calls)
    assert not any("routing-tag" in c.headers for c in standin.calls)
    with pytest.raises(ValueError, match="underscore"):
        source(standin, "routing-tag=nightly")


def test_a_personal_access_token_is_the_bearer_without_a_login(standin, monkeypatch):
    monkeypatch.delenv("DREMIO_PASSWORD", raising=False)
    monkeypatch.setenv("DREMIO_TOKEN", PAT)
    src = source(standin, user="")
    assert count(src) == 100 and count(src) == 100
    assert standin.handshakes == 0
    assert all(c.headers["authorization"] == [f"Bearer {PAT}"] for c in standin.calls)
    assert len(standin.sessions) == 1
    assert PAT not in src.describe()


def test_a_lost_session_starts_a_new_one_without_a_new_login(standin, env):
    src = source(standin)
    assert count(src) == 100
    standin.sessions.clear()  # Dremio's session cache forgot it
    assert count(src) == 100
    assert standin.handshakes == 1 and len(standin.sessions) == 1


def test_bad_credentials_are_a_clear_error_without_the_password(standin, monkeypatch, caplog):
    monkeypatch.delenv("DREMIO_TOKEN", raising=False)
    monkeypatch.setenv("DREMIO_PASSWORD", "wrong-" + PASSWORD)
    caplog.set_level(logging.DEBUG)
    src = source(standin)
    with pytest.raises(SourceUnavailable, match="Dremio refused the credentials of user alice") as e:
        count(src)
    shown = [str(e.value), src.describe(), caplog.text, repr(e.value)]
    assert not any(PASSWORD in text for text in shown)
    # A password in the URI (local trials) stays out of everything too.
    in_uri = open_source(f"dremio://alice:{PASSWORD}@127.0.0.1:{standin.port}")
    assert count(in_uri) == 100
    standin.stop()
    with pytest.raises(SourceUnavailable) as gone:
        count(in_uri)
    assert not any(PASSWORD in text for text in (str(gone.value), in_uri.describe(), caplog.text))


def test_uri_and_environment_checks(standin, monkeypatch):
    monkeypatch.setenv("DREMIO_PASSWORD", PASSWORD)
    monkeypatch.setenv("DREMIO_TOKEN", PAT)
    with pytest.raises(ValueError, match="not both"):
        source(standin)
    monkeypatch.delenv("DREMIO_TOKEN")
    monkeypatch.delenv("DREMIO_PASSWORD")
    with pytest.raises(ValueError, match="DREMIO_PASSWORD"):
        source(standin)
    with pytest.raises(ValueError, match="unknown Dremio URI option"):
        source(standin, "colour=blue")
    with pytest.raises(ValueError, match="dremio\\+tls"):
        source(standin, "ca=/nonexistent.pem")


def test_the_standin_refuses_what_dremio_refuses(standin):
    client = flight.connect(standin.location)
    basic = client.authenticate_basic_token("alice", PASSWORD)
    ok = flight.FlightCallOptions(headers=[basic])
    with pytest.raises(flight.FlightUnauthenticatedError, match="Unable to authenticate user alice"):
        client.authenticate_basic_token("alice", "nope")
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(flight.FlightDescriptor.for_command("SELECT 1"),
                               flight.FlightCallOptions(headers=[(b"authorization", b"Bearer forged")]))
    with pytest.raises(flight.FlightUnauthenticatedError, match="UserSession is not available"):
        client.get_flight_info(flight.FlightDescriptor.for_command("SELECT 1"), flight.FlightCallOptions(
            headers=[basic, (b"cookie", b"SESSION_ID=unknown")]))
    for call in (lambda: client.get_flight_info(flight.FlightDescriptor.for_path("space", "folder"), ok),
                 lambda: list(client.list_flights(options=ok)),
                 lambda: list(client.do_action(flight.Action("x", b""), ok))):
        with pytest.raises(pa.ArrowNotImplementedError):
            call()
    info = client.get_flight_info(flight.FlightDescriptor.for_command("SELECT 1 AS x"), ok)
    [endpoint] = info.endpoints
    assert list(endpoint.locations) == [] and info.total_records == -1 and info.total_bytes == -1
    with pytest.raises(pa.ArrowInvalid):
        client.get_flight_info(flight.FlightDescriptor.for_command("SELECT * FROM nowhere.t"), ok)


# ---------------------------------------------------------------- queries and errors


def test_bad_sql_and_unknown_tables_are_invalid_queries_from_dremio(standin, env):
    src = source(standin)
    with pytest.raises(InvalidQuery, match="^Dremio: ") as bad:
        src.query("SELEC id FROM space.folder.reviews")
    assert "Traceback" not in str(bad.value) and "\n" not in str(bad.value)
    with pytest.raises(InvalidQuery, match="Table 'space.folder.nope' not found"):
        src.schema("SELECT * FROM space.folder.nope")
    assert standin.do_gets == 0  # refused at GetFlightInfo, as Dremio does


def test_a_large_scan_streams_in_batches(standin, env):
    src = source(standin)
    standin.pause = threading.Event()
    reader = src.query("SELECT id, twice FROM space.folder.big WHERE id >= 0")
    first = reader.read_next_batch()
    assert standin.streaming.wait(5) and not standin.pause.is_set()  # Dremio is held mid-result
    assert first.num_rows == 4096
    standin.pause.set()
    sizes = [first.num_rows] + [b.num_rows for b in reader]
    assert len(sizes) > 10 and sum(sizes) == ROWS


def test_schema_is_flight_info_only(standin, env):
    src = source(standin)
    schema = src.schema('SELECT "id", "review" FROM ' + DEEP)
    assert schema.names == ["id", "review"]
    assert standin.do_gets == 0 and len(standin.calls_of("GET_FLIGHT_INFO")) == 1


def test_attach_with_schema_only_runs_no_doget(standin, env):
    src = source(standin)
    con = duckdb.connect()
    src.attach(con, con, scan_plan(("_scan_0", 'SELECT "id", "review" FROM ' + DEEP + ' WHERE "id" > 10')),
               schema_only=True)
    table = con.sql("SELECT * FROM _scan_0").to_arrow_table()
    assert table.num_rows == 0 and table.schema.names == ["id", "review"]
    assert standin.do_gets == 0


def test_attach_streams_scans_into_the_locked_down_engine(standin, env):
    src = source(standin)
    scans = (("_scan_0", "SELECT id, twice FROM space.folder.big WHERE id % 2 = 0"),
             ("_scan_1", 'SELECT "id", "review" FROM ' + DEEP))
    sql = "SELECT count(*) AS n, sum(b.twice) AS s, count(r.review) AS r FROM _scan_0 b LEFT JOIN _scan_1 r USING (id)"
    engine = Engine(src, (), batch_rows=1000)
    plan = scan_plan(*scans, sql=sql)
    assert engine.schema(plan).names == ["n", "s", "r"]
    assert standin.do_gets == 0
    schema, batches = engine.stream(plan)
    result = pa.Table.from_batches(list(batches), schema).to_pylist()
    assert result == [{"n": ROWS // 2, "s": sum(range(0, 2 * ROWS, 4)), "r": 50}]
    assert standin.do_gets == 2
    assert standin.sql[-2:] == [s for _, s in scans]  # the scan SQL reaches Dremio as given
    with pytest.raises(InvalidQuery, match="^Dremio: "):  # bad pushed-down SQL fails at attach
        engine.schema(scan_plan(("_scan_0", "SELECT nope FROM space.folder.big")))


def test_a_local_query_that_stops_early_ends_the_dremio_stream(standin, env):
    engine = Engine(source(standin), ())
    for sql in ("SELECT * FROM _scan_0 LIMIT 5", "SELECT * FROM _scan_0"):
        schema, batches = engine.stream(scan_plan(("_scan_0", "SELECT * FROM space.folder.big"), sql=sql))
        next(batches)
        batches.close()  # the client went away
        assert eventually_true(lambda: standin.open_streams == 0)
    assert standin.do_gets == 2


def test_tables_lists_dremio_paths(standin, env):
    assert sorted(source(standin).tables()) == sorted(
        [DEEP, 'Samples."select"', "space.folder.big", "space.folder.reviews"]
    )


def test_path_quoting_helpers():
    assert quote_part("reviews") == "reviews" and quote_part("my space") == '"my space"'
    assert quote_part("select") == '"select"' and quote_part('a"b') == '"a""b"'
    known = {"samples", "samples.samples.dremio.com"}
    assert split_schema("Samples.samples.dremio.com", known) == ["Samples", "samples.dremio.com"]
    assert split_schema("a.b.c", set()) == ["a", "b", "c"]


# ---------------------------------------------------------------- failures mid-stream


def test_a_failure_mid_stream(standin, env):
    src = source(standin)
    standin.fail_after = 2
    with pytest.raises(SourceUnavailable, match="Dremio failed while streaming") as e:
        src.query("SELECT * FROM space.folder.big").read_all()
    assert "Traceback" not in str(e.value)
    # Read by DuckDB, the same failure reaches the engine as InvalidInputException; stream_error
    # recovers ours from it.
    con = duckdb.connect()
    src.attach(con, con, scan_plan(("_scan_0", "SELECT * FROM space.folder.big")))
    with pytest.raises(duckdb.InvalidInputException) as raised:
        con.sql("SELECT count(*) FROM _scan_0").fetchall()
    ours = stream_error(raised.value)
    assert isinstance(ours, SourceUnavailable) and str(ours).startswith("Dremio failed while streaming")
    # Through the engine, the client's stream fails with Dremio's error, not DuckDB's wrapper.
    schema, batches = Engine(src, ()).stream(scan_plan(("_scan_0", "SELECT * FROM space.folder.big"),
                                                        sql="SELECT * FROM _scan_0"))
    with pytest.raises(SourceUnavailable, match="^Dremio failed while streaming"):
        list(batches)
    standin.fail_with = lambda: flight.FlightCancelledError("Query cancelled by user 'alice'")
    with pytest.raises(QueryCancelled, match="^Dremio cancelled the query while streaming"):
        src.query("SELECT * FROM space.folder.big").read_all()
    standin.fail_after = None
    assert count(src) == 100


def test_dremio_stopping_mid_stream_then_coming_back(standin, env):
    src = source(standin)
    standin.pause = threading.Event()
    reader = src.query("SELECT * FROM space.folder.big")
    reader.read_next_batch()
    stopper = threading.Thread(target=standin.stop)
    stopper.start()
    with pytest.raises(SourceUnavailable, match="unavailable while streaming"):
        for _ in reader:
            pass
    stopper.join(10)
    with pytest.raises(SourceUnavailable, match="is unavailable"):  # nobody at the port
        count(src)
    standin.pause = None
    standin.start()  # same port; its sessions are gone, the token still holds
    assert eventually(lambda: count(src)) == 100
    assert standin.handshakes == 1 and len(standin.sessions) == 1


# ---------------------------------------------------------------- TLS


def test_tls_with_a_ca_file(tmp_path, env):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    s = DremioStandin(sample_database(), PATHS, users={"alice": PASSWORD}, tls=(cert.read_bytes(), key.read_bytes()))
    s.start()
    try:
        src = open_source(f"dremio+tls://alice@localhost:{s.port}?ca={cert}")
        assert count(src) == 100 and src.describe().startswith("dremio+tls:alice@localhost:")
        plain = open_source(f"dremio://alice@localhost:{s.port}")  # no TLS: the server will not talk
        with pytest.raises(SourceUnavailable):
            count(plain)
    finally:
        s.stop()


def test_metadata_is_kept_no_longer_than_its_lifetime(standin, env, monkeypatch):
    """Expired entries went stale but stayed: tables named in ever new spellings grew it for good."""
    from flight_lstm.sources import dremio

    src = open_source(f"dremio://alice@127.0.0.1:{standin.port}")
    clock = [1000.0]
    monkeypatch.setattr(dremio.time, "monotonic", lambda: clock[0])
    for spelling in ("space.folder.reviews", '"space".folder.reviews', 'space."folder".reviews', DEEP):
        assert src.columns(spelling) == ["id", "review"]
    assert len(src._cache) == 4
    clock[0] += dremio.CACHE_SECONDS + 1
    assert src.columns("space.folder.big") == ["id", "twice"]
    assert len(src._cache) == 1  # the stale ones went when the next entry came
