"""Auth and TLS with real clients: Basic once, then an expiring bearer; TLS and mutual TLS."""
import json
import logging
import os
import stat
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import REVIEWS, run
from flight_lstm.client import connect
from flight_lstm.server import FlightLSTMServer, auth
from flight_lstm.server.auth import BasicBearerAuth, HandshakeAnswer, Tokens, Users
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "users.json"
    result = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "users", "add", str(path), "ana"],
                            input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return Users(path)


def serve(lake, users, tokens=None, **options):
    server = FlightLSTMServer(Service(DuckDBSource(lake)), options.pop("location", "grpc://127.0.0.1:0"),
                              auth=BasicBearerAuth(users, tokens or Tokens()), **options)
    threading.Thread(target=server.serve, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def secured(lake, users):
    server = serve(lake, users)
    yield f"grpc://127.0.0.1:{server.port}"
    server.shutdown()


def test_users_file_holds_only_a_salted_slow_hash(users):
    text = users.path.read_text()
    assert PASSWORD not in text and json.loads(text)["ana"].startswith("scrypt$")
    assert stat.S_IMODE(os.stat(users.path).st_mode) == 0o600
    users.add("ben", PASSWORD)
    a, b = users.load()["ana"], users.load()["ben"]
    assert a != b  # salted
    assert users.verify("ben", PASSWORD) == b and users.verify("ben", "wrong password") is None


def test_anonymous_calls_are_refused_but_health_stays_open(secured):
    client = flight.connect(secured)
    with pytest.raises(flight.FlightUnauthenticatedError):
        run(client, "SELECT 1")
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.list_flights())
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.do_action(flight.Action("models", b"")))
    health = json.loads(next(iter(client.do_action(flight.Action("health", b"")))).body.to_pybytes())
    assert health == {"status": "ok"}


def test_login_then_bearer_on_every_call(secured):
    client = connect(secured, "ana", PASSWORD)
    assert run(client, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == len(REVIEWS)
    health = json.loads(next(iter(client.do_action(flight.Action("health", b"")))).body.to_pybytes())
    assert "source" in health  # the full answer once authenticated
    header = flight.connect(secured).authenticate_basic_token("ana", PASSWORD)
    assert header[0] == b"authorization" and header[1].startswith(b"Bearer ")


def test_wrong_password_and_forged_or_expired_tokens(secured, lake, users, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(flight.FlightUnauthenticatedError) as e:
        connect(secured, "ana", "not the password")
    assert "not the password" not in str(e.value) and "not the password" not in caplog.text
    with pytest.raises(flight.FlightUnauthenticatedError):
        connect(secured, "nobody", PASSWORD)
    forged_token = Tokens().issue("ana", users.load()["ana"])  # the right user and hash, another secret
    forged = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {forged_token}".encode())])
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid or expired"):
        flight.connect(secured).get_flight_info(flight.FlightDescriptor.for_command("SELECT 1"), forged)
    short = serve(lake, users, Tokens(seconds=-1))
    try:
        client = connect(f"grpc://127.0.0.1:{short.port}", "ana", PASSWORD)
        with pytest.raises(flight.FlightUnauthenticatedError, match="expired"):
            run(client, "SELECT 1")
    finally:
        short.shutdown()


def test_replicas_sharing_a_secret_accept_each_others_tokens(lake, users):
    secret = b"shared-between-replicas"
    one, two = serve(lake, users, Tokens(secret)), serve(lake, users, Tokens(secret))
    try:
        header = flight.connect(f"grpc://127.0.0.1:{one.port}").authenticate_basic_token("ana", PASSWORD)
        options = flight.FlightCallOptions(headers=[header])
        info = flight.connect(f"grpc://127.0.0.1:{two.port}").get_flight_info(
            flight.FlightDescriptor.for_command("SELECT 42 AS x"), options)
        assert info.schema.names == ["x"]
    finally:
        one.shutdown()
        two.shutdown()


def _certificate(tmp_path, name, ca=None):
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subj = ["-subj", f"/CN={'localhost' if name == 'server' else name}"]
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", *subj, "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
    else:
        csr = tmp_path / f"{name}.csr"
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, *subj],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
                        "-out", cert, "-days", "2"], check=True, capture_output=True)
    return key, cert


def test_tls_and_mutual_tls(tmp_path, lake, users):
    skey, scert = _certificate(tmp_path, "server")
    server = serve(lake, users, location="grpc+tls://127.0.0.1:0",
                   tls_certificates=[flight.CertKeyPair(scert.read_bytes(), skey.read_bytes())])
    try:
        uri = f"grpc+tls://localhost:{server.port}"
        client = connect(uri, "ana", PASSWORD, tls_root_certs=scert.read_bytes())
        assert run(client, "SELECT 1 AS one").column("one")[0].as_py() == 1
        with pytest.raises(flight.FlightError):  # plaintext cannot talk to a TLS-only server
            flight.connect(f"grpc://127.0.0.1:{server.port}").authenticate_basic_token("ana", PASSWORD)
    finally:
        server.shutdown()

    ca = _certificate(tmp_path, "ca")
    ckey, ccert = _certificate(tmp_path, "client", ca=ca)
    mutual = serve(lake, users, location="grpc+tls://127.0.0.1:0", verify_client=True, root_certificates=ca[1].read_bytes(),
                   tls_certificates=[flight.CertKeyPair(scert.read_bytes(), skey.read_bytes())])
    try:
        uri = f"grpc+tls://localhost:{mutual.port}"
        with pytest.raises(flight.FlightError):  # no client certificate
            flight.connect(uri, tls_root_certs=scert.read_bytes()).authenticate_basic_token("ana", PASSWORD)
        client = flight.connect(uri, tls_root_certs=scert.read_bytes(), cert_chain=ccert.read_bytes(),
                                private_key=ckey.read_bytes())
        header = client.authenticate_basic_token("ana", PASSWORD)
        info = client.get_flight_info(flight.FlightDescriptor.for_command("SELECT 2 AS two"), flight.FlightCallOptions(headers=[header]))
        assert info.schema.names == ["two"]
    finally:
        mutual.shutdown()


def test_query_command_logs_in(secured):
    env = {**os.environ, "FLIGHT_LSTM_PASSWORD": PASSWORD}
    ok = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "query", "--server", secured, "--user", "ana",
                         "SELECT count(*) AS n FROM reviews"], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0 and str(len(REVIEWS)) in ok.stdout
    denied = subprocess.run([sys.executable, "-m", "flight_lstm.cli", "query", "--server", secured, "SELECT 1"],
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and "authentication required" in denied.stderr


def test_users_add_refuses_an_existing_user_unless_replaced_and_list_and_remove_work(tmp_path):
    path = tmp_path / "users.json"

    def users(*args, password=PASSWORD):
        return subprocess.run([sys.executable, "-m", "flight_lstm.cli", "users", *args], input=password + "\n",
                              capture_output=True, text=True, timeout=60)

    assert users("add", str(path), "ana").returncode == 0
    before = Users(path).load()["ana"]
    again = users("add", str(path), "ana", password="another password")
    assert again.returncode == 1 and "exists already: pass --replace" in again.stderr
    assert Users(path).load()["ana"] == before  # not overwritten
    assert users("add", str(path), "ana", "--replace", password="another password").returncode == 0
    assert Users(path).verify("ana", "another password") and not Users(path).verify("ana", PASSWORD)
    assert users("add", str(path), "bo").returncode == 0
    assert users("list", str(path)).stdout.split() == ["ana", "bo"]
    removed = users("remove", str(path), "ana")
    assert removed.returncode == 0 and Users(path).names() == ["bo"]
    missing = users("remove", str(path), "ana")
    assert missing.returncode == 1 and "no user 'ana'" in missing.stderr and "Traceback" not in missing.stderr


def test_the_query_log_names_the_user_and_the_kind_of_error_never_the_query(secured, caplog):
    caplog.set_level(logging.INFO, logger="flight_lstm.server")
    client = flight.connect(secured)
    options = flight.FlightCallOptions(headers=[client.authenticate_basic_token("ana", PASSWORD)])
    with pytest.raises(pa.ArrowInvalid):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT secret_col FROM reviews"), options)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("query kind=get_flight_info")][-1]
    assert "user='ana'" in line and "outcome=InvalidQuery error=Binder_Error" in line and "secret_col" not in line


def test_handshakes_waiting_for_silent_clients_are_bounded():
    """A handshake waits for its client's request; clients that never send hold at most `at_once`
    of them, and the next is refused at once instead of holding a server thread too."""
    answer, entered, release = HandshakeAnswer(at_once=2), threading.Semaphore(0), threading.Event()

    class Silent:
        def read(self):
            entered.release()
            release.wait(10)
            raise OSError("Stream is closed.")  # the client went away without a request

    class Replies(list):
        write = list.append

    waiting = [threading.Thread(target=answer.authenticate, args=(Replies(), Silent()), daemon=True) for _ in range(2)]
    for t in waiting:
        t.start()
    assert entered.acquire(timeout=5) and entered.acquire(timeout=5)
    with pytest.raises(flight.FlightUnavailableError, match="too many handshakes"):
        answer.authenticate(Replies(), Silent())
    release.set()
    for t in waiting:
        t.join(5)
    replies = Replies()
    answer.authenticate(replies, Silent())  # the waits were given back
    assert replies == [b""]


def test_one_user_cannot_hold_off_everyone_elses_logins():
    """Silent handshakes of a logged-in user hold at most `per_user` waits: another user still
    logs in (the anonymous pool is for servers without auth, where there is no user to tell)."""
    answer, entered, release = HandshakeAnswer(at_once=64, per_user=1), threading.Semaphore(0), threading.Event()

    class Silent:
        def read(self):
            entered.release()
            release.wait(10)
            raise OSError("Stream is closed.")

    def handshake(user: str, replies: list):
        auth._handshake_users[threading.get_ident()] = user  # as the middleware leaves it
        try:
            answer.authenticate(replies, Silent())
        except flight.FlightUnavailableError as e:
            replies.append(e)

    class Replies(list):
        write = list.append

    held = threading.Thread(target=handshake, args=("mallory", Replies()), daemon=True)
    held.start()
    assert entered.acquire(timeout=5)
    refused = Replies()
    handshake("mallory", refused)
    assert isinstance(refused[0], flight.FlightUnavailableError)
    other = threading.Thread(target=handshake, args=("alice", Replies()), daemon=True)
    other.start()
    assert entered.acquire(timeout=5)  # alice's login waits for her request: not refused
    release.set()
    held.join(5), other.join(5)


def test_one_users_cached_plans_do_not_answer_another(lake, tmp_path, monkeypatch):
    """A cached plan answers sooner: shared by all, its timing told bob which exact texts ana ran."""
    from flight_lstm.plan.catalog import Catalog

    users = Users(tmp_path / "users.json")
    users.add("ana", PASSWORD)
    users.add("bob", PASSWORD)
    server = serve(lake, users)
    planned = []
    real_plan = Catalog.plan
    monkeypatch.setattr(Catalog, "plan", lambda self, query, *args: planned.append(query) or real_plan(self, query, *args))
    try:
        sql = "SELECT id FROM reviews WHERE id = 3"
        for name in ("ana", "ana", "bob", "bob"):
            client = flight.connect(f"grpc://127.0.0.1:{server.port}")
            options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(name, PASSWORD)])
            info = client.get_flight_info(flight.FlightDescriptor.for_command(sql), options)
            assert client.do_get(info.endpoints[0].ticket, options).read_all().num_rows == 1
        assert planned.count(sql) == 2  # once for ana, once for bob: bob's first call was not ana's cache
        explained = "SELECT id FROM reviews WHERE id = 4"
        for name in ("ana", "bob"):  # the explain action too
            client = flight.connect(f"grpc://127.0.0.1:{server.port}")
            options = flight.FlightCallOptions(headers=[client.authenticate_basic_token(name, PASSWORD)])
            assert list(client.do_action(flight.Action("explain", explained.encode()), options))
        assert planned.count(explained) == 2
    finally:
        server.shutdown()
