"""Operator calls lifted out of DuckDB (plan/lift.py, engine/lift.py) answer exactly as DuckDB calling
them would: same rows, names, types and values, and the same errors."""
from __future__ import annotations

import dataclasses
import time

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from flight_lstm.errors import InvalidQuery, QueryCancelled
from flight_lstm.engine import Engine, Limits
from flight_lstm.models import checks
from flight_lstm.models.checks import between_batches
from flight_lstm.plan import Catalog
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource
from udfs import OPERATORS
from udfs.base import Operator

LIFTED = [
    "SELECT id, sentiment(review) FROM reviews",
    "SELECT sentiment(review) AS s, id, sentiment_label(review) FROM reviews WHERE id > 1",
    "SELECT *, sentiment(upper(review), 'sst2-bilstm@4') AS shout FROM reviews LIMIT 5",
    "SELECT id, sentiment(review || ' !') AS s FROM (SELECT * FROM reviews WHERE review <> '') t",
    "SELECT id, sentiment(review) FROM reviews WHERE false",
    # round 28: a column of the query's own named as a lifted one had made the batch's column ambiguous
    "SELECT review AS __lift0_0, sentiment(review) AS s, id AS __LIFT1_0 FROM reviews LIMIT 3",
]
NOT_LIFTED = [
    "SELECT sentiment('a fine film') AS s",  # no FROM: one row, nothing to gain
    "SELECT sentiment(review) AS s FROM reviews WHERE s > 0",  # the alias is used by WHERE
    "SELECT sentiment(review) AS s, s * 2 AS twice FROM reviews",  # ... or by a later column
    "SELECT id, sentiment(review) FROM reviews ORDER BY 2",  # ORDER BY may name the column
    "SELECT DISTINCT sentiment_label(review) FROM reviews",
    "SELECT review, count(*) AS n, sentiment(review) FROM reviews GROUP BY review",
    "SELECT sentiment(review) FROM reviews UNION ALL SELECT 1.0",
]


def _without_lift(service: Service, sql: str) -> pa.Table:
    schema, batches = service.stream(dataclasses.replace(service.plan(sql), lift=None))
    return pa.Table.from_batches(list(batches), schema)


def _with_lift(service: Service, sql: str) -> pa.Table:
    plan = service.plan(sql)
    schema, batches = service.stream(plan)
    return pa.Table.from_batches(list(batches), schema), plan


@pytest.fixture(scope="module")
def service(lake):
    return Service(DuckDBSource(lake))


@pytest.mark.parametrize("sql", LIFTED)
def test_lifted_queries_answer_as_duckdb_calling_the_operator(service, sql):
    lifted, plan = _with_lift(service, sql)
    assert plan.lift is not None and "sentiment" not in plan.lift.sql.lower().replace("__lift", "")
    expected = _without_lift(service, sql)
    assert lifted.schema == expected.schema == service.schema(plan)
    assert lifted.num_rows == expected.num_rows
    for name in expected.column_names:
        a, b = lifted[name].to_pylist(), expected[name].to_pylist()
        if pa.types.is_floating(expected.schema.field(name).type):
            np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), atol=1e-6)
        else:
            assert a == b


@pytest.mark.parametrize("sql", NOT_LIFTED)
def test_queries_a_lift_could_change_stay_in_duckdb(service, sql):
    assert service.plan(sql).lift is None


def test_parameters_bind_in_the_lifted_query(service):
    plan = service.plan("SELECT id, sentiment(review) AS s FROM reviews WHERE id < ?")
    schema, batches = service.stream(plan, params=[3])
    table = pa.Table.from_batches(list(batches), schema)
    assert plan.lift and table["id"].to_pylist() == [0, 1, 2]
    assert table["s"][0].as_py() > 0 > table["s"][1].as_py()


def test_each_engine_batch_is_one_operator_call(tmp_path):
    path = tmp_path / "big.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t AS SELECT i AS id, 'fine ' || (i % 7) AS review FROM range(20000) r(i)")
    seen = []

    def count(texts, model=None):
        seen.append(len(texts))
        return pa.array(np.zeros(len(texts)), pa.float64())

    op = Operator("count_rows", ("VARCHAR",), "DOUBLE", count, "sentiment")
    engine = Engine(DuckDBSource(str(path)), (op,), batch_rows=8192)
    plan = Catalog(operators=(op,)).plan("SELECT id, count_rows(review) AS z FROM t")
    schema, batches = engine.stream(plan)
    out = pa.Table.from_batches(list(batches), schema)
    assert out.num_rows == 20000 and sorted(out["id"].to_pylist()) == list(range(20000))
    assert seen == [8192, 8192, 3616]  # the engine's batches, not DuckDB's 2,048-row chunks


def test_an_operator_failing_is_a_query_error_and_a_cancel_stops_inside_a_call(tmp_path):
    path = tmp_path / "fail.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t AS SELECT i AS id, 'x' AS review FROM range(30000) r(i)")

    def fail(texts, model=None):
        raise ValueError("the model cannot read this\nsecond line")

    done = []

    def slow(texts, model=None):  # a model's loop: a check before each inference batch of 1,000
        for start in range(0, len(texts), 1000):
            between_batches()
            done.append(start)
            if len(done) == 3:
                stop.append(True)  # the client goes away during the third batch
        return pa.array(np.ones(len(texts)), pa.float64())

    ops = (Operator("fail", ("VARCHAR",), "DOUBLE", fail, "sentiment"),
           Operator("slow", ("VARCHAR",), "DOUBLE", slow, "sentiment"))
    engine, catalog = Engine(DuckDBSource(str(path)), ops), Catalog(operators=ops)
    _, batches = engine.stream(catalog.plan("SELECT fail(review) FROM t"))
    with pytest.raises(InvalidQuery, match="^the model cannot read this$"):
        list(batches)

    stop = []
    _, batches = engine.stream(catalog.plan("SELECT slow(review) FROM t"), cancelled=lambda: bool(stop))
    with pytest.raises(QueryCancelled):
        next(batches)
    assert done == [0, 1000, 2000]  # the call stopped at its next inference batch
    assert checks._between_batches.get() is None  # and the check does not outlive the call



def test_a_lifted_call_is_the_servers_work_even_before_the_models_first_check(tmp_path):
    """The idle limit judges the client's silence between the server's steps. A lifted call that
    works 0.5 s before its first budget check (tokenizing a batch on a loaded server) was taken
    for a client silent past a 0.3 s limit, and the query ended."""
    path = tmp_path / "slow.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE t AS SELECT i AS id, 'x' AS review FROM range(10) r(i)")

    def prelude(texts, model=None):
        time.sleep(0.5)
        return pa.array(np.ones(len(texts)), pa.float64())

    op = Operator("prelude", ("VARCHAR",), "DOUBLE", prelude, "sentiment")
    engine = Engine(DuckDBSource(str(path)), (op,), limits=Limits(idle_seconds=0.3))
    schema, batches = engine.stream(Catalog(operators=(op,)).plan("SELECT id, prelude(review) AS p FROM t"))
    assert pa.Table.from_batches(list(batches), schema)["p"].to_pylist() == [1.0] * 10
