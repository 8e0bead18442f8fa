"""The engine's half of a lift (plan/lift.py): put the lifted operator calls back into the
batches DuckDB returns, one model call per batch."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Iterator

import pyarrow as pa

from flight_lstm import heap
from flight_lstm.engine.errors import operator_error
from flight_lstm.engine.limits import Budget
from flight_lstm.models.checks import checked_between_batches
from flight_lstm.plan.lift import Lift, LiftedCall


def apply_lift(lift: Lift, schema: pa.Schema, batches: Iterable[pa.RecordBatch], operators,
               budget: Budget, step: Callable[[], ContextManager] = nullcontext) -> Iterator[pa.RecordBatch]:
    """Batches of the lifted query in; batches of the original query's `schema` out.

    Each batch is one model call: a model sorts its texts by length into buckets, and the larger
    the call, the more alike the lengths in a bucket. The budget (cancel, time limit) is checked
    between the model's own inference batches, so a stop still acts within a fraction of a second.
    Each call is a step of the query (`step`, Running.step): the server's work, never taken for a
    silent client, even before the model's first inference batch (a loaded server had taken more
    than a 0.3 s idle limit to get there).
    """
    by_name = {op.name: op for op in operators}
    try:
        for batch in batches:
            with step(), checked_between_batches(budget.check):
                out = _apply(lift, schema, batch, by_name)
            yield out
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()  # the source's stream ends now, not when collected


def _apply(lift: Lift, schema: pa.Schema, batch: pa.RecordBatch, by_name: dict) -> pa.RecordBatch:
    first = {call.args[0]: call for call in lift.calls}
    arguments = {name for call in lift.calls for name in call.args}
    columns = [_call(first[name], batch, by_name) if name in first else column
               for name, column in zip(batch.schema.names, batch.columns)
               if name in first or name not in arguments]
    return pa.RecordBatch.from_arrays(
        [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, schema)], schema=schema)


def _call(call: LiftedCall, batch: pa.RecordBatch, by_name: dict) -> pa.Array:
    """As DuckDB would report a failing UDF: the operator's own message, as a query error; out of
    memory, as the resource it is (engine/errors.py: `operator_error`)."""
    try:
        with heap.model_call():
            return by_name[call.operator].fn(*(batch.column(a) for a in call.args), model=call.model)
    except Exception as e:
        error = operator_error(call.operator, e)
    raise error  # outside `except`: the failed call's traceback, and the arrays it holds, go now
