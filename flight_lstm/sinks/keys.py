"""When two rows have the same key: when their key values are identical, text byte for byte. Every
place that compares keys uses this one relation, or exactly-once breaks where two of them differ:
the run's uniqueness check (Arrow group_by), its keys-vs-done anti-join and chunk filter (DuckDB,
plan/increment.py), and each target's idempotent write (DuckDB, Iceberg, Dremio).

The engines agree on identity for some types only, so a key must have one of them:
- floating point is refused: DuckDB holds -0.0 = 0.0 and NaN = NaN where Arrow keeps 0.0 and -0.0
  apart (two source rows, each matching the other's chunk, were written four times), Dremio takes
  NaN as NULL, and rounding moves a value between engines;
- so are intervals (DuckDB holds 1 month = 30 days) and lists, structs and maps (Arrow cannot
  group them);
- text is compared under the binary collation in DuckDB (`same_key`), so a column declared
  COLLATE NOCASE cannot make 'A' and 'a' one key there while Arrow, Iceberg and Dremio, which
  compare bytes, keep them apart.
"""
from __future__ import annotations

import pyarrow as pa

from flight_lstm.errors import InvalidQuery


def is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):  # a DuckDB ENUM
        return is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


EXACT = (is_text, pa.types.is_integer, pa.types.is_decimal, pa.types.is_boolean, pa.types.is_date,
         pa.types.is_time, pa.types.is_timestamp, pa.types.is_binary, pa.types.is_large_binary,
         pa.types.is_fixed_size_binary)


def key_types(output: pa.Schema, keys: tuple[str, ...]) -> dict[str, pa.DataType]:
    """Each key's type in the query's output (found by name as the query resolves it: exactly,
    else ignoring case); InvalidQuery for a key whose type has no sound equality."""
    types = {}
    for k in keys:
        field = next((f for f in output if f.name == k), None) or next(
            (f for f in output if f.name.lower() == k.lower()), None)
        if field is None:
            raise InvalidQuery(f"--key {k!r} is not a column of the query's output")
        if not any(exact(field.type) for exact in EXACT):
            raise InvalidQuery(f"key column {k!r} is {field.type}, which cannot identify rows: {_why(field.type)}; "
                               f"cast it in the query to a DECIMAL, an integer or text, "
                               f"e.g. CAST({k} AS DECIMAL(18, 6)) AS {k}")
        types[k] = field.type
    return types


def _why(t: pa.DataType) -> str:
    if pa.types.is_floating(t):
        return "floating-point equality is no identity (NaN, -0.0 = 0.0, rounding)"
    if pa.types.is_interval(t):
        return "DuckDB holds 1 month = 30 days"
    return "a key is one value of an exact type (integer, decimal, text, date, timestamp, ...)"


def same_key(left: str, right: str, *, text: bool) -> str:
    """DuckDB SQL true when the key values `left` and `right` (`text`: of a text type) are the same key."""
    if text:
        left, right = (f"(CAST({side} AS VARCHAR) COLLATE c)" for side in (left, right))
    return f"{left} IS NOT DISTINCT FROM {right}"
