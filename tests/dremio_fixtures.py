"""The Dremio stand-in (dremio_standin.py) as the Dremio tests share it (not a test module): the
credentials it takes, a sample database behind it, and the fixtures `standin` (that database
served on a loopback port) and `env` (DREMIO_PASSWORD set for the client). A test module imports
the fixtures it uses."""
from __future__ import annotations

import duckdb
import pytest

from dremio_standin import DremioStandin

PASSWORD = "s3cret-Pa55word"
PAT = "pat-7f3a9c1e5b"
ROWS = 200_000
DEEP = '"my space"."folder.with.dots".sub.reviews'
PATHS = {DEEP: "reviews", "space.folder.reviews": "reviews", "space.folder.big": "big", ("Samples", "select"): "reviews"}


def sample_database() -> duckdb.DuckDBPyConnection:
    """100 `reviews` and ROWS rows of `big`, in memory."""
    con = duckdb.connect()
    con.execute("CREATE TABLE reviews AS SELECT range AS id, 'review ' || range AS review FROM range(100)")
    con.execute(f"CREATE TABLE big AS SELECT range AS id, range * 2 AS twice FROM range({ROWS})")
    return con


@pytest.fixture
def standin():
    s = DremioStandin(sample_database(), PATHS, users={"alice": PASSWORD}, pats={PAT: "alice"}, batch_rows=4096).start()
    yield s
    s.stop()


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("DREMIO_TOKEN", raising=False)
    monkeypatch.setenv("DREMIO_PASSWORD", PASSWORD)
    return monkeypatch
