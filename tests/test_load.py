"""Load: eight clients at once with mixed queries (sentiment over id ranges, forecasts over many
series, plain SQL) get exactly the answers each query gets alone, and the server stays healthy.

The figures (clients, queries, errors, seconds, queries/s, and the speed-up over one client running
the same queries in turn) are printed; bench/load.py measures throughput against client count
properly. On a shared 2-core machine no scaling ratio is asserted here.
"""
from __future__ import annotations

import json
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import run, start_server
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bench/load.py measures both settings

CLIENTS, QUERIES_EACH = 8, 6
TEXTS, STORES, HOURS = 1200, 40, 240
WORDS = ("a moving , beautifully acted film . dull , lifeless and far too long . it isn't good at all "
         "one of the best films of the year terrible script awful acting 😍 fun").split()


def make_busy_lake(path) -> str:
    rng = np.random.default_rng(7)
    reviews = pa.table({
        "id": pa.array(range(TEXTS), pa.int64()),
        "review": [" ".join(rng.choice(WORDS, rng.integers(3, 30))) for _ in range(TEXTS)],
    })
    t = np.arange(HOURS)
    sales = pa.table({
        "store": np.repeat([f"s{i:02d}" for i in range(STORES)], HOURS),
        "ts": pa.array(np.tile((np.datetime64("2026-01-01T00:00") + t.astype("timedelta64[h]")).astype("datetime64[us]"),
                               STORES), pa.timestamp("us")),
        "amount": np.concatenate([(i + 1) * (10 + 3 * np.sin(2 * np.pi * t / 24)) + rng.normal(0, 0.5, HOURS)
                                  for i in range(STORES)]),
    })
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE reviews AS SELECT * FROM reviews")
        con.execute("CREATE TABLE sales AS SELECT * FROM sales")
    return str(path)


QUERIES = [
    *(f"SELECT id, sentiment(review) AS s, sentiment_label(review) AS l FROM reviews "
      f"WHERE id >= {a} AND id < {a + 150} ORDER BY id" for a in range(0, TEXTS, 150)),
    "SELECT store, forecast(list(amount ORDER BY ts), 12) AS f FROM sales GROUP BY store ORDER BY store",
    "SELECT store, step, mean, lo, hi FROM forecast_table('sales', key => 'store', ts => 'ts', value => 'amount', "
    "horizon => 6) ORDER BY store, step",
    "SELECT store, count(*) AS n, sum(amount) AS total FROM sales GROUP BY store ORDER BY store",
    "SELECT count(*) AS n, count(review) AS texts, max(length(review)) AS longest FROM reviews",
]


def work(clients: int, each: int) -> list[list[str]]:
    """The queries client c runs, in order: with several clients every kind is in flight at once."""
    return [[QUERIES[(3 * c + k) % len(QUERIES)] for k in range(each)] for c in range(clients)]


WORK = work(CLIENTS, QUERIES_EACH)


def assert_same(got: pa.Table, expected: pa.Table) -> None:
    """Equal, but for float rounding: scoring batches and parallel sums may group rows differently."""
    assert got.schema.equals(expected.schema) and got.num_rows == expected.num_rows
    for name in expected.column_names:
        g, e = got.column(name).to_pylist(), expected.column(name).to_pylist()
        if pa.types.is_floating(expected.schema.field(name).type) or pa.types.is_list(expected.schema.field(name).type):
            assert [v is None for v in g] == [v is None for v in e], name
            g, e = [v for v in g if v is not None], [v for v in e if v is not None]
            np.testing.assert_allclose(np.array(g, dtype=float), np.array(e, dtype=float), rtol=1e-6, atol=1e-9,
                                       err_msg=name)
        else:
            assert g == e, name


def run_clients(uri: str, work: list[list[str]]) -> tuple[list[tuple[str, object, float]], float]:
    """Each list of queries on its own client and thread, all starting together: (sql, answer or
    exception, seconds) in the order each client ran them, and the wall time."""
    answers: list[list[tuple[str, object, float]]] = [[] for _ in work]
    start = threading.Barrier(len(work) + 1)

    def client(i: int) -> None:
        with flight.connect(uri) as c:
            start.wait()
            for sql in work[i]:
                began = time.perf_counter()
                try:
                    answer = run(c, sql)
                except Exception as e:  # noqa: BLE001 - counted as an error by the caller
                    answer = e
                answers[i].append((sql, answer, time.perf_counter() - began))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return [a for per_client in answers for a in per_client], time.perf_counter() - began


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    srv, uri = start_server(Service(DuckDBSource(make_busy_lake(tmp_path_factory.mktemp("load") / "lake.db"))))
    yield uri
    srv.shutdown()


def test_eight_clients_with_mixed_queries_get_the_answers_each_gets_alone(busy):
    with flight.connect(busy) as c:
        expected = {sql: run(c, sql) for sql in QUERIES}  # each alone, first
    serial, serial_seconds = run_clients(busy, [[sql for per_client in WORK for sql in per_client]])
    answers, seconds = run_clients(busy, WORK)

    errors = [(sql, a) for sql, a, _ in serial + answers if isinstance(a, Exception)]
    print(f"\nload: {CLIENTS} clients x {QUERIES_EACH} queries = {len(answers)} queries, {len(errors)} errors, "
          f"{seconds:.1f} s, {len(answers) / seconds:.1f} queries/s; one client running the same "
          f"{len(serial)} in turn: {serial_seconds:.1f} s, {len(serial) / serial_seconds:.1f} queries/s; "
          f"speed-up {serial_seconds / seconds:.2f}")
    assert not errors, errors[:3]
    assert len(answers) == CLIENTS * QUERIES_EACH
    for sql, answer, _ in serial + answers:
        assert_same(answer, expected[sql])
    with flight.connect(busy) as c:  # still healthy, and still right
        health = json.loads(next(iter(c.do_action(flight.Action("health", b"")))).body.to_pybytes())
        assert health["status"] == "ok"
        assert_same(run(c, QUERIES[0]), expected[QUERIES[0]])
