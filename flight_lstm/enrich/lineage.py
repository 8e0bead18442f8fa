"""What scored a row and when: the lineage columns every enrichment run adds to its rows.

    _model       VARCHAR    the models the query called, 'name@version' (comma-separated when
                            several; NULL when the query calls no operator)
    _scored_at   TIMESTAMP WITH TIME ZONE (UTC)  when the row's chunk was scored
"""
from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from flight_lstm.errors import InvalidQuery
from flight_lstm.sinks.base import LINEAGE as COLUMNS, MODEL, SCORED_AT  # noqa: F401 - named here too


def with_lineage(schema: pa.Schema) -> pa.Schema:
    for field in COLUMNS:
        if field.name in schema.names:
            raise InvalidQuery(f"the query's output may not have a column named {field.name}: enrichment adds it")
    return pa.schema([*schema, *COLUMNS])


def stamp(rows: pa.Table, model: str | None) -> pa.Table:
    now = datetime.now(timezone.utc)
    rows = rows.append_column(COLUMNS[0], pa.array([model] * rows.num_rows, pa.string()))
    return rows.append_column(COLUMNS[1], pa.array([now] * rows.num_rows, COLUMNS[1].type))
