"""The engine's half of a lift (plan/lift.py): put the lifted operator calls back into the
batches DuckDB returns, one model call per slice of a batch."""
from __future__ import annotations

from typing import Iterable, Iterator

import pyarrow as pa

from flight_lstm.errors import FlightLSTMError, InvalidQuery
from flight_lstm.limits import Budget
from flight_lstm.plan.lift import Lift, LiftedCall

# Rows per model call: few enough that a cancel or time limit acts within about a second. Larger
# calls bucket texts by length better (one call on 100k texts is ~12% faster), smaller ones worse.
SLICE_ROWS = 8_192


def apply_lift(lift: Lift, schema: pa.Schema, batches: Iterable[pa.RecordBatch], operators,
               budget: Budget) -> Iterator[pa.RecordBatch]:
    """Batches of the lifted query in; batches of the original query's `schema` out, a slice at
    a time, checking the budget (cancel, time limit) before each."""
    by_name = {op.name: op for op in operators}
    try:
        for batch in batches:
            for start in range(0, batch.num_rows, SLICE_ROWS):
                budget.spend(0)
                yield _apply(lift, schema, batch.slice(start, SLICE_ROWS), by_name)
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
    """As DuckDB would report a failing UDF: the operator's own message, as a query error."""
    try:
        return by_name[call.operator].fn(*(batch.column(a) for a in call.args), model=call.model)
    except FlightLSTMError:
        raise
    except Exception as e:
        raise InvalidQuery(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from None
