"""Run a row-wise plan over a client's own record batches (DoExchange): each batch is registered
alone as `input` in a locked-down DuckDB with no source attached, and comes back as one batch with
the prediction columns, in order. The data is the client's; nothing of the source is readable."""
from __future__ import annotations

import json
from typing import Callable, Iterable, Iterator

import duckdb
import pyarrow as pa

from flight_lstm.engine.database import checked_sql, lost
from flight_lstm.engine.errors import translated_errors
from flight_lstm.engine.lift import apply_lift
from flight_lstm.engine.limits import Budget
from flight_lstm.engine.running import Running, stopped_by
from flight_lstm.errors import InvalidQuery, first_line
from flight_lstm.plan import Plan
from flight_lstm.plan.row_wise import INPUT

# DuckDB physical operators that map rows one by one; anything else needs more than the batch at hand.
ROW_BY_ROW = {"PROJECTION", "FILTER", "PYTHON_ARROW_SCAN", "ARROW_SCAN", "EMPTY_RESULT"}


def exchange(
    engine, plan: Plan, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
    cancelled: Callable[[], bool | str] = lambda: False,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The output schema, then the output batches as the input batches arrive.

    The schema comes from an empty `input` (LIMIT 0: no operator runs), and DuckDB's physical plan
    must hold only row-by-row steps: a second lock behind the planner's check. The exchange holds
    one of the server's query slots, and its time and rows count against the server's limits; a
    client that stops sending or reading loses the slot after the server's idle time."""
    running = engine.start(None, Budget(engine.limits, cancelled))
    try:
        with running.step(), stopped_by(running.budget), translated_errors(engine.source):
            _register(running.con, schema)
            _check_row_by_row(running.con, plan.sql)
            out = checked_sql(running.con, plan.sql).limit(0).to_arrow_table().schema
    except BaseException:
        running.end()
        raise
    return out, _run(running, plan, out, batches, engine)


def _register(con: duckdb.DuckDBPyConnection, data: pa.RecordBatch | pa.Schema) -> None:
    """The client's batch (or, for a schema, an empty one) as `input`; a type Arrow or DuckDB
    cannot handle (a sparse union, say) is the client's error."""
    try:
        con.register(INPUT, data.empty_table() if isinstance(data, pa.Schema) else data)
    except (pa.ArrowException, duckdb.Error) as e:  # a decimal of negative scale: "Information loss on integer cast"
        if isinstance(e, duckdb.Error) and lost(e):
            raise
        raise InvalidQuery(f"DuckDB cannot read the batches you send: {first_line(e)}") from None


def _check_row_by_row(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    checked_sql(con, sql)  # one SELECT, before it is pasted after EXPLAIN
    (_, text), = con.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
    found = {node["name"] for node in _nodes(json.loads(text))} - ROW_BY_ROW
    if found:
        raise InvalidQuery(f"the query needs the whole input ({', '.join(sorted(found)).lower()}); "
                           "an exchange runs only row-by-row SQL over each batch")


def _nodes(tree: list[dict]) -> Iterator[dict]:
    for node in tree:
        yield node
        yield from _nodes(node.get("children", ()))


def _run(running: Running, plan: Plan, schema, batches, engine) -> Iterator[pa.RecordBatch]:
    budget = running.budget
    try:
        with stopped_by(budget), translated_errors(engine.source):
            for batch in batches:
                budget.touch()
                with running.step():
                    budget.check()  # the client may send slowly: check time and cancellation first
                    _register(running.con, batch)
                    if plan.lift:
                        lifted = checked_sql(running.con, plan.lift.sql).to_arrow_table().combine_chunks().to_batches()
                        out = pa.Table.from_batches(apply_lift(plan.lift, schema, lifted, engine.operators, budget),
                                                    schema)
                    else:
                        out = checked_sql(running.con, plan.sql).to_arrow_table()
                out = _one_batch(out, schema)
                budget.spend(out.num_rows)
                yield out
    finally:
        running.end()


def _one_batch(table: pa.Table, schema: pa.Schema) -> pa.RecordBatch:
    """DuckDB may split a result into chunks; the client gets exactly one batch back per batch sent,
    its columns named as announced: DuckDB's schema renames a name given twice (`id`, `id_1`), its
    result does not, and a batch whose names differ fails the stream (it had: INTERNAL)."""
    batches = table.combine_chunks().to_batches()
    return batches[0].rename_columns(schema.names) if batches else pa.RecordBatch.from_pylist([], schema=schema)
