"""What an operator is: a SQL signature plus the vectorized Arrow function behind it.

Operators know Arrow arrays and the model registry, nothing about DuckDB, Flight or sources.
Registration in an engine is generic: one loop over `OPERATORS` (flight_lstm/engine/database.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from flight_lstm import heap, threads
from flight_lstm.models import default_registry as registry  # the process's one registry


@dataclass(frozen=True)
class Operator:
    """A SQL function `name(params...)`; the same name with one more VARCHAR picks a model."""

    name: str
    params: tuple[str, ...]
    returns: str
    fn: Callable[..., pa.Array]
    model_kind: str
    row_wise: bool = True

    @property
    def with_model_name(self) -> str:
        """Engines register one signature per name, so the model-choosing form gets its own."""
        return f"{self.name}__with_model"


def load_model(kind: str, model: str | None):
    threads.size_torch()  # the operators used alone: no entry point sized torch's threads
    heap.keep_freed_blocks()
    return registry().load(kind, model)


def as_array(values) -> pa.Array:
    """Accept an Array, ChunkedArray or Python sequence; string views become large strings."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    elif not isinstance(values, pa.Array):
        values = pa.array(values)
    if pa.types.is_string_view(values.type):
        values = values.cast(pa.large_string())
    return values


def slices(operator: str, lengths: np.ndarray, limit: int, width: int = 1) -> list[slice]:
    """Consecutive runs of series (row slices, in order) holding at most `limit` values each
    (points x `width` columns), so a model scores one run at a time: what a call costs the model
    stays bounded however many series DuckDB hands over at once. A series over `limit` alone is
    refused, naming the operator, its size and the bound."""
    lengths = np.asarray(lengths, np.int64)
    sizes = lengths * max(width, 1)
    if len(sizes) and sizes.max() > limit:
        longest = int(lengths[sizes.argmax()])
        columns = f" of {width} columns ({longest * width:,} values)" if width > 1 else ""
        raise ValueError(f"{operator} takes at most {limit:,} {'values' if width > 1 else 'points'} of one series "
                         f"in a call, got a series of {longest:,} points{columns}; pass a shorter span")
    ends = np.cumsum(sizes)
    out, i = [], 0
    while i < len(sizes):
        j = int(np.searchsorted(ends, (ends[i - 1] if i else 0) + limit, side="right"))
        out.append(slice(i, j))
        i = j
    return out


def constant(values, what: str):
    """The single value of a per-call parameter such as a model name (SQL passes it per row)."""
    if values is None or isinstance(values, (str, int, float)):
        return values
    distinct = as_array(values).drop_null().unique()
    if len(distinct) > 1:
        raise ValueError(f"{what} must be the same for every row, got {len(distinct)} values")
    return distinct[0].as_py() if len(distinct) else None


def parameter_groups(n: int, *params):
    """Split rows by their distinct parameter tuple (usually one group: a constant horizon).

    Yields (values tuple, row indices). Rows with a NULL parameter are left out: their result is NULL.
    A scalar parameter applies to every row.
    """
    columns, valid = [], np.ones(n, dtype=bool)
    for p in params:
        if p is None or np.isscalar(p):
            columns.append(np.full(n, np.nan if p is None else p, dtype=np.float64))
            valid &= p is not None
            continue
        arr = as_array(p)
        valid &= ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        columns.append(np.asarray(arr.cast(pa.float64()).fill_null(0).to_numpy(), dtype=np.float64))
    rows = np.flatnonzero(valid)
    if not len(rows):
        return
    keys = np.column_stack([c[rows] for c in columns])
    distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
    for g, key in enumerate(distinct):
        yield tuple(key), rows[inverse.ravel() == g]
