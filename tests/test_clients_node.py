"""An npm Flight SQL client, run with Node: @lakehouse-rs/flight-sql-client (arrow-rs's client).
It handshakes whenever it is given a user, so it needs Handshake answered with auth and without.

`make test` installs the client under build/clients first (or point FLIGHT_LSTM_NODE_MODULES at a
node_modules holding it); without it these tests fail, saying how to install it.
"""
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import VIEWS, start_server
from flight_lstm.server import FlightLSTMServer
from flight_lstm.server.auth import BasicBearerAuth, Tokens, Users
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = Path(os.environ.get("FLIGHT_LSTM_NODE_MODULES", ROOT / "build" / "clients" / "node_modules"))
SCRIPT = Path(__file__).parent / "clients" / "query.cjs"
SQL = "SELECT id, score IS NOT NULL AS scored, 'x'::ENUM('x', 'y') AS e FROM scored WHERE id < 2 ORDER BY id"
ROWS = [{"id": 0, "scored": True, "e": "x"}, {"id": 1, "scored": True, "e": "x"}]

@pytest.fixture(autouse=True, scope="module")
def node_client():
    assert shutil.which("node"), "these tests run Node: install Debian's nodejs and npm"
    assert (NODE_MODULES / "@lakehouse-rs" / "flight-sql-client").is_dir(), \
        "the npm Flight SQL client is not installed: `make test` installs it under build/clients"


def node_query(port: int, sql: str, *login: str) -> list[dict]:
    out = subprocess.run(["node", str(SCRIPT), "127.0.0.1", str(port), sql, *login], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def open_server(lake):
    server, _ = start_server(Service(DuckDBSource(lake), views=VIEWS))
    yield server
    server.shutdown()


def test_the_npm_client_queries_without_auth(open_server):
    assert node_query(open_server.port, SQL) == ROWS


def test_a_client_that_always_handshakes_connects_without_auth(open_server):
    # Given a user, the client handshakes (Basic) before anything else; a server without
    # --auth-file answers the handshake and ignores the credentials.
    assert node_query(open_server.port, SQL, "anyone", "any password") == ROWS


def test_the_npm_client_logs_in_with_auth(lake, tmp_path):
    users = Users(tmp_path / "users.json")
    users.add("ana", "correct horse battery")
    server = FlightLSTMServer(Service(DuckDBSource(lake), views=VIEWS), "grpc://127.0.0.1:0",
                              auth=BasicBearerAuth(users, Tokens()))
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        assert node_query(server.port, SQL, "ana", "correct horse battery") == ROWS
    finally:
        server.shutdown()
