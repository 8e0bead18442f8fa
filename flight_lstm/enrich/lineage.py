"""What scored a row and when: the lineage columns every enrichment run adds to its rows.

    _model       VARCHAR    the models the query called, 'name@version' (comma-separated when
                            several; NULL when the query calls no operator)
    _scored_at   TIMESTAMP WITH TIME ZONE (UTC)  when the row's chunk was scored
"""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
from sqlglot import exp

from flight_lstm.errors import InvalidQuery
from flight_lstm.plan.parse import parse_one_query

MODEL, SCORED_AT = "_model", "_scored_at"
COLUMNS = (pa.field(MODEL, pa.string()), pa.field(SCORED_AT, pa.timestamp("us", tz="UTC")))


def model_of(sql: str, operators) -> str | None:
    """The `_model` value for rows of `sql`: each operator call's model, resolved now (a bare
    name or the default means its latest version at the time of the run)."""
    from flight_lstm.models import ModelNotFound
    from udfs.base import registry

    by_name = {op.name: op for op in operators}
    refs = set()
    for call in parse_one_query(sql).find_all(exp.Anonymous):
        op = by_name.get(call.name.lower())
        if op is None:
            continue
        args = call.expressions
        named = len(args) == len(op.params) + 1 and isinstance(args[-1], exp.Literal)
        try:
            refs.add(registry().resolve(op.model_kind, args[-1].this if named else None).ref)
        except ModelNotFound as e:
            raise InvalidQuery(str(e)) from None
    return ",".join(sorted(refs)) or None


def with_lineage(schema: pa.Schema) -> pa.Schema:
    for field in COLUMNS:
        if field.name in schema.names:
            raise InvalidQuery(f"the query's output may not have a column named {field.name}: enrichment adds it")
    return pa.schema([*schema, *COLUMNS])


def stamp(rows: pa.Table, model: str | None) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = rows.append_column(COLUMNS[0], pa.array([model] * rows.num_rows, pa.string()))
    return rows.append_column(COLUMNS[1], pa.array([now] * rows.num_rows, COLUMNS[1].type))
