"""Result columns as clients read them: dictionary columns decoded, and each column described with
the Flight SQL column metadata (type name, precision, scale, read-only, ...), so ADBC fills
`xdbc_type_name` and SQLAlchemy and JDBC see SQL types.

Decoded because pyarrow's GeneratorStream never sends dictionary batches (an open Arrow bug): a
DuckDB ENUM would reach the client as a stream it cannot read. An ENUM is its VARCHAR values.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import pyarrow as pa

PREFIX = "ARROW:FLIGHT:SQL:"
_INTEGERS = {8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT"}
_DIGITS = {8: 3, 16: 5, 32: 10, 64: 19}  # decimal digits of the largest value
_TIME_UNITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}  # fractional digits


def plain(t: pa.DataType) -> pa.DataType:
    """`t` with every dictionary, at any depth, replaced by its value type."""
    if pa.types.is_dictionary(t):
        return plain(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        kind = pa.list_ if pa.types.is_list(t) else pa.large_list
        return kind(t.value_field.with_type(plain(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(plain(t.value_type)), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(plain(t.key_type)), t.item_field.with_type(plain(t.item_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(plain(f.type)) for f in t])
    return t


def type_name(t: pa.DataType) -> str:
    """The SQL (DuckDB) name of an Arrow type."""
    if pa.types.is_dictionary(t):
        return type_name(t.value_type)
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        return ("" if pa.types.is_signed_integer(t) else "U") + _INTEGERS[t.bit_width]
    if pa.types.is_floating(t):
        return "DOUBLE" if t.bit_width == 64 else "FLOAT"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "VARCHAR"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t) \
            or pa.types.is_binary_view(t):
        return "BLOB"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP WITH TIME ZONE" if t.tz else "TIMESTAMP"
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return "INTERVAL"
    if pa.types.is_null(t):
        return "NULL"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{type_name(t.value_type)}[]"
    if pa.types.is_fixed_size_list(t):
        return f"{type_name(t.value_type)}[{t.list_size}]"
    if pa.types.is_map(t):
        return f"MAP({type_name(t.key_type)}, {type_name(t.item_type)})"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f'"{f.name}" {type_name(f.type)}' for f in t) + ")"
    return str(t).upper()


def column_metadata(t: pa.DataType) -> dict[str, str]:
    """The Flight SQL ColumnMetadata keys for a column of type `t` (FlightSql.proto)."""
    meta = {"TYPE_NAME": type_name(t), "IS_AUTO_INCREMENT": "0", "IS_READ_ONLY": "1", "IS_SEARCHABLE": "1",
            "IS_CASE_SENSITIVE": "1" if type_name(t) == "VARCHAR" else "0"}
    if pa.types.is_decimal(t):
        meta.update(PRECISION=str(t.precision), SCALE=str(t.scale))
    elif pa.types.is_integer(t):
        meta.update(PRECISION=str(_DIGITS[t.bit_width]), SCALE="0")
    elif pa.types.is_floating(t):
        meta["PRECISION"] = "15" if t.bit_width == 64 else "7"
    elif pa.types.is_timestamp(t) or pa.types.is_time(t):
        meta["SCALE"] = str(_TIME_UNITS[t.unit])
    return {PREFIX + k: v for k, v in meta.items()}


def described(schema: pa.Schema) -> pa.Schema:
    """The schema clients get: plain types, each field carrying its Flight SQL column metadata."""
    return pa.schema([pa.field(f.name, plain(f.type), f.nullable, {**(f.metadata or {}), **column_metadata(f.type)})
                      for f in schema], metadata=schema.metadata)


def decoded(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The batches of `schema` (as `described` gives it), dictionary columns cast to their values.
    Closing it closes `batches`, so the query behind them ends at once."""
    try:
        for batch in batches:
            if any(a.type != f.type for a, f in zip(batch.columns, schema)):
                batch = pa.RecordBatch.from_arrays([a if a.type == f.type else a.cast(f.type)
                                                    for a, f in zip(batch.columns, schema)], schema=schema)
            yield batch
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def result(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """A query's (schema, batches) as clients get them."""
    out = described(schema)
    return out, decoded(out, batches)
