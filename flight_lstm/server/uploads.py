"""Arrow data a client sends (DoExchange batches, DoPut parameters) is untrusted bytes.

Arrow's IPC reader checks only that a batch's buffers are large enough for its lengths; what the
offsets, dictionary indices and string views inside them point at is not checked, and DuckDB and
pyarrow read where they point. A view claiming 4,000 bytes of a 16-byte buffer handed back the
server's heap (another user's bearer token among it), and a bad buffer index crashed the process.
So every uploaded batch is validated in full before anything reads a value, extension types are
read as their storage (which is what is read), and string and binary views become plain large
strings and binaries, each value then held in its own bytes: a view column may not refer to more
bytes than it carries, since views that share bytes would multiply what a reader copies. Views
nested in lists or structs, and list views, are refused.

Values DuckDB cannot hold are refused too, at any depth: a timestamp in seconds or milliseconds
whose microseconds overflow 64 bits (past the year 294,247) made DuckDB's casts fail with an
INTERNAL error, which invalidates the whole database for every client; so did reading a decimal
of negative scale (the database survived that one).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flight_lstm.errors import InvalidQuery, first_line

_PLAIN = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
MAX_DECIMAL_DIGITS = 38  # DuckDB's widest decimal
# DuckDB registers and plans an upload's columns before any time limit can stop it, in time that
# grows faster than their number: 16,000 columns took 2.5 s here, 150,000 (a 16 MB schema) ran 22.7 s
# past a 3 s limit. So an upload holds at most MAX_UPLOAD_LEAVES leaves (columns, each struct field
# and list element counted), as many as one SQL column's type may (plan/widths.py: MAX_TYPE_WIDTH; 0.4 s),
# nested at most MAX_UPLOAD_DEPTH levels (where Arrow's own import stops).
MAX_UPLOAD_LEAVES, MAX_UPLOAD_DEPTH = 4096, 64


def received_schema(schema: pa.Schema, ranges: bool = True) -> pa.Schema:
    """The schema the server reads uploads in: extension types as their storage (what is read),
    views as plain large types (nested ones refused); with `ranges`, no decimal DuckDB cannot read."""
    _check_shape(schema)
    fields = []
    for field in schema:
        kind = _storage(field.type)
        if kind not in _PLAIN and _holds_views(kind):
            raise InvalidQuery(f"column {field.name!r} nests string, binary or list views ({field.type}); "
                               "send plain strings, binaries and lists")
        if ranges and _holds_odd_decimals(kind):
            raise InvalidQuery(f"column {field.name!r} holds decimals DuckDB cannot read ({field.type}): it takes "
                               f"at most {MAX_DECIMAL_DIGITS} digits and a scale from 0 to the precision")
        fields.append(pa.field(field.name, _PLAIN.get(kind, kind), field.nullable))
    return pa.schema(fields, metadata=schema.metadata)


def _check_shape(schema: pa.Schema) -> None:
    """At most MAX_UPLOAD_LEAVES leaves, nested at most MAX_UPLOAD_DEPTH levels (walked without
    recursing, before anything else reads the types)."""
    leaves, todo = 0, [(field.type, 1) for field in schema]
    while todo:
        t, depth = todo.pop()
        if depth > MAX_UPLOAD_DEPTH:
            raise InvalidQuery(f"the data you send nests types more than {MAX_UPLOAD_DEPTH} levels deep")
        t = _storage(t)
        children = [t.value_type] if pa.types.is_dictionary(t) else [t.field(i).type for i in range(t.num_fields)]
        leaves += not children
        if leaves > MAX_UPLOAD_LEAVES:
            raise InvalidQuery(f"the data you send has more than {MAX_UPLOAD_LEAVES:,} columns (each struct field "
                               "and list element counted); send the columns the query reads")
        todo += [(child, depth + 1) for child in children]


def received(batch: pa.RecordBatch, ranges: bool = True) -> pa.RecordBatch:
    """`batch` checked in full and in `received_schema`, or InvalidQuery naming what is wrong.
    `ranges=False` leaves values' ranges to the caller's own, narrower rule (bound parameters)."""
    schema = received_schema(batch.schema, ranges)
    try:
        batch.validate(full=True)
    except pa.ArrowInvalid as e:
        raise InvalidQuery(f"the batch you sent is not valid Arrow: {first_line(e)}") from None
    columns = []
    for field, column in zip(batch.schema, batch.columns):
        while isinstance(column, pa.ExtensionArray):
            column = column.storage
        if column.type in _PLAIN:
            if _view_bytes(column) > sum(b.size for b in column.buffers() if b is not None):
                raise InvalidQuery(f"column {field.name!r}: its views refer to more bytes than it sends")
            column = column.cast(_PLAIN[column.type])
        if ranges:
            _within_duckdb(field.name, column)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# Microseconds per unit of the timestamps DuckDB widens to microseconds on the way.
_WIDENED = {"s": 1_000_000, "ms": 1_000}
_MAX_US = 2**63 - 2  # DuckDB keeps 2^63 - 1 and its negation for infinity


def _within_duckdb(name: str, column: pa.Array) -> None:
    """InvalidQuery naming the column when one of its values, at any depth, is a timestamp DuckDB
    cannot widen to microseconds."""
    for values in _leaves(column):
        per = _WIDENED.get(getattr(values.type, "unit", None)) if pa.types.is_timestamp(values.type) else None
        if per is None or values.null_count == len(values):
            continue
        extremes = pc.min_max(values.cast(pa.int64()))
        if max(-extremes["min"].as_py(), extremes["max"].as_py()) > _MAX_US // per:
            raise InvalidQuery(f"column {name!r} holds a timestamp ({values.type}) beyond DuckDB's range "
                               "(years 290,309 BC to 294,247 AD)")


def _leaves(column: pa.Array):
    """The arrays of plain values inside `column`: a list's values, a struct's or map's fields, a
    dictionary's values, a run-end encoded array's values."""
    t = column.type
    if pa.types.is_dictionary(t):
        yield from _leaves(column.dictionary)
    elif pa.types.is_run_end_encoded(t):
        yield from _leaves(column.values)
    elif pa.types.is_map(t):
        yield from _leaves(column.keys)
        yield from _leaves(column.items)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield from _leaves(column.flatten())
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _leaves(column.field(i))
    else:
        yield column


def _view_bytes(column: pa.Array) -> int:
    """The bytes a string or binary view column's values hold: each 16-byte view starts with its
    value's length (int32), NULL slots excepted."""
    views = np.frombuffer(column.buffers()[1], np.int32)[4 * column.offset:4 * (column.offset + len(column)):4]
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return int(views[valid].astype(np.int64).sum())


def _storage(t: pa.DataType) -> pa.DataType:
    """An extension type (arrow.json, arrow.opaque, ...) is read as its storage type."""
    while isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    return t


def _holds_odd_decimals(t: pa.DataType) -> bool:
    """A decimal at any depth that DuckDB reads wrongly: a negative scale (10^3 units) failed its
    cast with an INTERNAL error, the kind of error that can invalidate the database."""
    t = _storage(t)
    if pa.types.is_dictionary(t):
        return _holds_odd_decimals(t.value_type)
    if pa.types.is_decimal(t):
        return not (t.precision <= MAX_DECIMAL_DIGITS and 0 <= t.scale <= t.precision)
    return any(_holds_odd_decimals(t.field(i).type) for i in range(t.num_fields))


def _holds_views(t: pa.DataType) -> bool:
    t = _storage(t)
    if pa.types.is_dictionary(t):
        return _holds_views(t.value_type)
    if t in _PLAIN or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return True
    return any(_holds_views(t.field(i).type) for i in range(t.num_fields))
