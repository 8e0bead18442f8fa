"""Shared fixtures: a real DuckDB file made by the test, a real Flight server on a loopback port,
and for enrichment a reviews lake of the test's own and a count of model calls."""
from __future__ import annotations

import os
import tempfile
import threading

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from enrichment import make_reviews, sentiment_module
from flight_lstm.server import FlightLSTMServer
from flight_lstm.server.auth import BasicBearerAuth, Tokens, Users
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

REVIEWS = [
    "a moving , beautifully acted film .",
    "dull , lifeless and far too long .",
    "It isn't good at all.",
    "one of the best films of the year",
    None,
    "",
    "🎬🍿 😍",
    "terrible script , awful acting",
]
VIEWS = {"scored": "SELECT id, review, sentiment(review) AS score FROM reviews"}


def make_lake(path, hours: int = 24 * 10, stores=("a", "b", "c")) -> str:
    rng = np.random.default_rng(0)
    t = np.arange(hours)
    ts = (np.datetime64("2026-01-01T00:00") + t.astype("timedelta64[h]")).astype("datetime64[us]")
    sales = pa.table({
        "store": np.repeat(stores, hours),
        "ts": pa.array(np.tile(ts, len(stores)), pa.timestamp("us")),
        "amount": np.concatenate([
            (i + 1) * 100 * (1 + 0.5 * np.sin(2 * np.pi * t / 24)) + rng.normal(0, 2, hours)
            for i in range(len(stores))
        ]),
    })
    reviews = pa.table({"id": pa.array(range(len(REVIEWS)), pa.int64()), "review": REVIEWS})
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE reviews AS SELECT * FROM reviews")
        con.execute("CREATE TABLE sales AS SELECT * FROM sales")
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def own_temp_dir(tmp_path_factory):
    """The suite's temporary files (the Dremio target's lock files among them, one per target)
    go under pytest's own temporary tree, which it prunes, not into the machine's /tmp."""
    temp = tmp_path_factory.mktemp("tmp")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"], tempfile.tempdir = str(temp), str(temp)
    yield
    tempfile.tempdir = None
    if before is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = before


@pytest.fixture(scope="session")
def lake(tmp_path_factory) -> str:
    return make_lake(tmp_path_factory.mktemp("lake") / "lake.db")


def start_server(service: Service) -> tuple[FlightLSTMServer, str]:
    server = FlightLSTMServer(service, "grpc://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    return server, f"grpc://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def one_torch_thread():
    """For tests that make many small model calls: on a busy 2-core machine torch's second thread
    makes each call 10 to 50 times slower (it waits for a core). No answer depends on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def server(lake):
    srv, uri = start_server(Service(DuckDBSource(lake), views=VIEWS, batch_rows=1000))
    yield uri
    srv.shutdown()


ANA = ("ana", "correct horse battery")  # the one user of `login_server`


@pytest.fixture
def login_server(lake, tmp_path):
    """A server on the test lake that asks for a login (ANA), its URI."""
    users = Users(tmp_path / "users.json")
    users.add(*ANA)
    server = FlightLSTMServer(Service(DuckDBSource(lake)), "grpc://127.0.0.1:0", auth=BasicBearerAuth(users, Tokens()))
    threading.Thread(target=server.serve, daemon=True).start()
    yield f"grpc://127.0.0.1:{server.port}"
    server.shutdown()


@pytest.fixture
def client(server):
    with flight.connect(server) as c:
        yield c


def run(client: flight.FlightClient, sql: str) -> pa.Table:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql))
    return pa.concat_tables(client.do_get(e.ticket).read_all() for e in info.endpoints)


def exchanged(client: flight.FlightClient, sql: str, data: pa.Table | pa.RecordBatch) -> pa.Table:
    """`sql` over `data` by DoExchange; a refusal raises (closing the writer raises it again)."""
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(sql))
    try:
        writer.begin(data.schema)
        writer.write(data)
        writer.done_writing()
        return reader.read_all()
    finally:
        writer.close()


@pytest.fixture
def reviews_lake(tmp_path) -> str:
    """A DuckDB file of this test's own with 60 `reviews` to enrich (enrichment.make_reviews), as a
    source URI; not the session's shared `lake`."""
    return make_reviews(tmp_path / "lake.db")


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Texts each model call scored: proof of which rows reached an operator."""
    seen: list[int] = []
    real = sentiment_module.load_model

    class Counting:
        def __init__(self, model):
            self.model = model

        def probabilities(self, texts):
            seen.append(len(texts))
            return self.model.probabilities(texts)

    monkeypatch.setattr(sentiment_module, "load_model", lambda kind, model: Counting(real(kind, model)))
    return seen
