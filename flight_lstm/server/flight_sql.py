"""Flight SQL over the Service, so off-the-shelf clients (the ADBC and JDBC Flight SQL drivers,
DBeaver) can query: the Flight server hands every Any-packed Flight SQL message here.

Queries are read-only: writes (updates, ingestion, DDL/DML through a prepared statement) are
refused, those prepared by the planner's own read-only check. Several rows of parameters bound to a
prepared query run it once per row, the results concatenated (the spec's one execution). The
session is fixed (no catalog, schema `main`), so session options need no state.

Tickets are self-contained: a plain query's ticket carries its SQL, a metadata ticket is the
Any-packed command itself (DBeaver expects that); a prepared statement's carries its handle (which
carries the SQL) and needs the server that holds its bound parameters. Every call names its user
(None with auth off): a prepared statement answers only the user who prepared it.
"""
from __future__ import annotations

import datetime
import re
import zoneinfo
from typing import Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
from duckdb import sqltypes
from duckdb.value.constant import Value

from flight_lstm.errors import InvalidQuery, QueryRefused, Unsupported, first_line, text_of
from flight_lstm.server import columns
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.server import flight_sql_metadata as metadata
from flight_lstm.server.prepared import (PARAMETER_BYTES, PARAMETER_ROWS, STATEMENT_TTL, PreparedStatements,
                                         parameter_bytes)
from flight_lstm.server.uploads import MAX_DECIMAL_DIGITS, received
from flight_lstm.service import Service

ACTIONS = {
    "CreatePreparedStatement": "Flight SQL: prepare a read-only query (ActionCreatePreparedStatementRequest).",
    "ClosePreparedStatement": "Flight SQL: close a prepared statement (ActionClosePreparedStatementRequest).",
    "SetSessionOptions": "Flight: set session options (SetSessionOptionsRequest); only catalog '' and schema 'main'.",
    "GetSessionOptions": "Flight: the session's options (GetSessionOptionsResult): catalog '' and schema 'main'.",
    "CloseSession": "Flight: close the session (CloseSessionResult; nothing to do: the session is fixed).",
}
WRITES = {"CommandStatementUpdate", "CommandPreparedStatementUpdate", "CommandStatementIngest",
          "CommandStatementSubstraitPlan"}
# The session every call runs in: no catalogs, unqualified names in `main` (ADBC's current_catalog
# and current_db_schema read these keys).
SESSION = {"catalog": "", "schema": metadata.DEFAULT_SCHEMA}
INVALID_NAME, INVALID_VALUE = 1, 2  # SetSessionOptionsResult.ErrorValue
CLOSED = 1  # CloseSessionResult.Status
# A parameter's type is known only once bound (DuckDB binds late), so the announced schema offers
# the common value types, as the Flight SQL SQLite example does; a client sends its own types anyway.
PARAMETER = pa.dense_union([pa.field("string", pa.string()), pa.field("bigint", pa.int64()),
                            pa.field("double", pa.float64()), pa.field("bool", pa.bool_()),
                            pa.field("bytes", pa.binary())])

Stream = tuple[pa.Schema, Iterator[pa.RecordBatch], frozenset]


def refuse_write(name: str) -> QueryRefused:
    return QueryRefused(f"flight-lstm is read-only: {name} is refused; queries are SELECT only")


class FlightSQL:
    def __init__(self, service: Service, statement_ttl: float = STATEMENT_TTL):
        self.service = service
        self.statements = PreparedStatements(statement_ttl)

    # --- GetFlightInfo / GetSchema ------------------------------------------------------------

    def flight_info(self, name: str, value: bytes, descriptor: flight.FlightDescriptor,
                    user: str | None) -> flight.FlightInfo:
        if name == "CommandStatementQuery":
            command = messages.unpack(name, value)
            _no_transaction(command)
            plan = self.service.plan(command.query, user=user)
            schema = columns.described(self.service.schema(plan, user=user))
            ticket = messages.pack(messages.TicketStatementQuery(statement_handle=command.query.encode()))
        elif name == "CommandPreparedStatementQuery":
            sql, rows = self.statements.get(messages.unpack(name, value).prepared_statement_handle, user)
            schema = columns.described(self.service.schema(self.service.plan(sql, user=user), rows and rows[0], user))
            ticket = descriptor.command
        else:
            schema = self._metadata_schema(name, value)
            ticket = descriptor.command
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    def _metadata_schema(self, name: str, value: bytes) -> pa.Schema:
        if name == "CommandGetTables":
            command = messages.unpack(name, value)
            return metadata.TABLES_WITH_SCHEMA if command.include_schema else metadata.TABLES_SCHEMA
        fixed = {"CommandGetSqlInfo": metadata.SQL_INFO_SCHEMA, "CommandGetCatalogs": metadata.CATALOGS_SCHEMA,
                 "CommandGetXdbcTypeInfo": metadata.XDBC_TYPE_INFO_SCHEMA,
                 "CommandGetDbSchemas": metadata.DB_SCHEMAS_SCHEMA,
                 "CommandGetTableTypes": metadata.TABLE_TYPES_SCHEMA, **metadata.EMPTY_LISTINGS}
        if name in fixed:
            return fixed[name]
        raise unsupported(name)

    # --- DoGet ----------------------------------------------------------------------------------

    def do_get(self, name: str, value: bytes, cancelled: Callable[[], bool | str], user: str | None) -> Stream:
        if name == "TicketStatementQuery":
            plan = self.service.plan(text_of(messages.unpack(name, value).statement_handle, "the statement handle"),
                                     user=user)
            return (*columns.result(*self.service.stream(plan, cancelled)), plan.operators)
        if name == "CommandPreparedStatementQuery":
            sql, rows = self.statements.get(messages.unpack(name, value).prepared_statement_handle, user)
            plan = self.service.plan(sql, user=user)
            return (*columns.result(*self.service.stream_each(plan, rows or [None], cancelled)), plan.operators)
        table = self._metadata_table(name, value)
        return table.schema, iter(table.to_batches()), frozenset()

    def _metadata_table(self, name: str, value: bytes) -> pa.Table:
        if name == "CommandGetSqlInfo":
            info = metadata.sql_info(int(self.statements.ttl * 1000))
            return metadata.sql_info_table(info, list(messages.unpack(name, value).info))
        if name == "CommandGetCatalogs":
            return metadata.CATALOGS_SCHEMA.empty_table()
        if name == "CommandGetDbSchemas":
            command = messages.unpack(name, value)
            if _other_catalog(command):
                return metadata.DB_SCHEMAS_SCHEMA.empty_table()
            return metadata.schemas_table(self.service.relations(), _opt(command, "db_schema_filter_pattern"))
        if name == "CommandGetTables":
            command = messages.unpack(name, value)
            if _other_catalog(command):
                return self._metadata_schema(name, value).empty_table()
            return metadata.tables_table(
                self.service.relations(), _opt(command, "db_schema_filter_pattern"),
                _opt(command, "table_name_filter_pattern"), list(command.table_types),
                self._dataset_schema if command.include_schema else None)
        if name == "CommandGetTableTypes":
            return metadata.table_types_table()
        if name == "CommandGetXdbcTypeInfo":
            command = messages.unpack(name, value)
            return metadata.xdbc_type_info_table(command.data_type if command.HasField("data_type") else None)
        if name in metadata.EMPTY_LISTINGS:
            return metadata.EMPTY_LISTINGS[name].empty_table()
        raise unsupported(name)

    def _dataset_schema(self, name: str, kind: str) -> pa.Schema:
        return columns.described(self.service.listed_schema(name, kind))

    # --- DoPut ----------------------------------------------------------------------------------

    def do_put(self, name: str, value: bytes, reader: flight.MetadataRecordBatchReader, user: str | None) -> bytes:
        """Bind a prepared query's parameters (one or more rows); the reply keeps the same handle."""
        if name in WRITES:
            raise refuse_write(name)
        if name != "CommandPreparedStatementQuery":
            raise unsupported(name)
        handle = messages.unpack(name, value).prepared_statement_handle
        self.statements.get(handle, user)  # an unknown handle reads no upload
        self.statements.bind(handle, *_rows(reader), user)
        return messages.DoPutPreparedStatementResult(prepared_statement_handle=handle).SerializeToString()

    # --- DoAction -------------------------------------------------------------------------------

    def do_action(self, action: str, body: bytes, user: str | None) -> list[bytes]:
        if action in ("SetSessionOptions", "GetSessionOptions", "CloseSession"):
            return [_session(action, body).SerializeToString()]
        name, value = messages.flight_sql_type(body) or ("", b"")
        if action == "CreatePreparedStatement" and name == "ActionCreatePreparedStatementRequest":
            request = messages.unpack(name, value)
            _no_transaction(request)
            plan = self.service.plan(request.query, user=user)  # refuses writes and DDL, as every query
            # With placeholders the result types wait for the values (DoPut), so no schema yet.
            schema = (b"" if plan.parameters
                      else columns.described(self.service.schema(plan, user=user)).serialize().to_pybytes())
            parameters = pa.schema([pa.field(n, PARAMETER) for n in self.service.parameters(plan)])
            result = messages.ActionCreatePreparedStatementResult(
                prepared_statement_handle=self.statements.open(request.query, user), dataset_schema=schema,
                parameter_schema=parameters.serialize().to_pybytes() if len(parameters) else b"")
            return [messages.pack(result)]
        if action == "ClosePreparedStatement" and name == "ActionClosePreparedStatementRequest":
            self.statements.close(messages.unpack(name, value).prepared_statement_handle, user)
            return []
        raise InvalidQuery(f"{action} needs its Flight SQL request message as the body")


def _rows(reader: flight.MetadataRecordBatchReader) -> tuple[list[list], int]:
    """The rows of parameters and the bytes they hold, read a batch at a time so an upload too large
    is refused as it comes. Each value is bound as its column's Arrow type says (`_bound`)."""
    rows, size, integers = [], 0, {}
    for chunk in reader:
        if chunk.data is None:
            continue
        batch = received(chunk.data, ranges=False)  # `_bound` holds values to a narrower range
        for field in batch.schema:
            if not _flat(field.type):
                raise InvalidQuery(f"bind flat values (numbers, strings, binaries, dates and times, NULL); "
                                   f"parameter {field.name!r} is {field.type}")
        # Each value becomes a Python object: a column of NULLs is 0 bytes of Arrow, not of memory;
        # a value bound with its type is a typed value too (VALUE_BYTES; integers once typed, below).
        typed = sum(len(c) - c.null_count for c in batch.columns if not (_plain(c.type) or pa.types.is_integer(c.type)))
        size = _within_bytes(size + parameter_bytes(batch.num_rows, batch.num_columns, batch.nbytes)
                             + VALUE_BYTES * typed)
        if len(rows) + batch.num_rows > PARAMETER_ROWS:
            raise InvalidQuery(f"bind at most {PARAMETER_ROWS:,} rows of parameters to one query")
        values = [_bound(i, field, column, integers)
                  for i, (field, column) in enumerate(zip(batch.schema, batch.columns))]
        rows.extend([column[i] for column in values] for i in range(batch.num_rows))
    if not rows:
        raise InvalidQuery("bind at least one row of parameters to a query, got 0")
    for i, (low, high) in integers.items():  # one type for the column, whatever row runs first
        if -(2 ** 31) <= low and high < 2 ** 31:
            continue  # DuckDB types every bare int of the column INTEGER
        kind = sqltypes.BIGINT if -(2 ** 63) <= low and high < 2 ** 63 else sqltypes.UBIGINT
        size = _within_bytes(size + VALUE_BYTES * sum(row[i] is not None for row in rows))
        for row in rows:
            if row[i] is not None:
                row[i] = Value(row[i], kind)
    return rows, size


def _within_bytes(size: int) -> int:
    if size > PARAMETER_BYTES:
        raise InvalidQuery(f"bound parameters may hold at most {PARAMETER_BYTES:,} bytes, counting "
                           f"each value as the Python object it becomes")
    return size


FLAT = (pa.types.is_null, pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal,
        pa.types.is_temporal, pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
        pa.types.is_large_binary, pa.types.is_fixed_size_binary)


def _flat(t: pa.DataType) -> bool:
    """A type a placeholder takes, held value by value: nested or encoded columns (lists, structs,
    dictionaries, run-end encoded) hold values that their Arrow size does not count."""
    return any(kind(t) for kind in FLAT)


# Binding by the Arrow type, not by the Python object a value becomes: DuckDB types a bare Python
# value by the value (an int64 column of 1 and 3000000000 was INTEGER then BIGINT, one row to the
# next), cannot tell a DECIMAL(41, 0) from a DOUBLE, read a month-day-nano interval as a list of
# three integers, and Python's own types failed on dates and timestamps out of their range (an
# OverflowError: INTERNAL). So each column's type is checked against what DuckDB represents
# exactly. A value whose Python object DuckDB reads as its type is bound as it is (a str, bytes,
# a bool, a float64, a date, a time of microseconds, an int of a column within 32 bits: INTEGER);
# every other one as a typed value (`duckdb.Value`): integers as BIGINT, or UBIGINT, for every row
# once any value of their column needs it (an integer literal's type, one for all rows), FLOAT,
# DECIMAL(p, s), TIME_NS, TIMESTAMP_S/_MS/(us)/_NS and TIMESTAMPTZ (an instant: DuckDB keeps no
# zone), INTERVAL. Refused, naming the parameter: decimals of more than 38 digits or a negative
# scale, intervals and durations of nanoseconds (DuckDB's hold months, days and microseconds),
# an unknown time zone, dates and timestamps outside years 1 to 9999.

# A typed value beside what CELL_BYTES counts: a duckdb.Value is 88 bytes, and a decimal's or
# timestamp's text (at most 89) stands in for the object counted there.
VALUE_BYTES = 96
_MIN_DAY, _MAX_DAY = -719_162, 2_932_896  # 0001-01-01 and 9999-12-31, in days from 1970-01-01
_EPOCH = datetime.datetime(1970, 1, 1)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_TIMESTAMP = {"s": sqltypes.TIMESTAMP_S, "ms": sqltypes.TIMESTAMP_MS, "us": sqltypes.TIMESTAMP,
              "ns": sqltypes.TIMESTAMP_NS}
_OFFSET = re.compile(r"[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9]")


def _plain(t: pa.DataType) -> bool:
    """Types whose Python objects DuckDB reads as exactly that type: bound as they are."""
    return (pa.types.is_null(t) or pa.types.is_boolean(t) or t == pa.float64() or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t))


def _bound(i: int, field: pa.Field, column: pa.Array, integers: dict) -> list:
    """The column's values as DuckDB is to bind them; InvalidQuery naming parameter `i` + 1 for
    a type or value DuckDB would not hold exactly, or any value that fails to convert."""
    where = f"parameter {i + 1} ({field.name!r}, {column.type})"
    try:
        return _values(i, column, integers)
    except InvalidQuery as e:
        raise InvalidQuery(f"{where}: {e}") from None
    except Exception as e:  # a conversion no check above foresaw is still the client's value
        raise InvalidQuery(f"{where} cannot be bound: {first_line(e)}") from None


def _values(i: int, column: pa.Array, integers: dict) -> list:
    t = column.type
    if _plain(t):
        return column.to_pylist()
    if pa.types.is_integer(t):
        if len(column) > column.null_count:
            low, high = pc.min_max(column).values()
            seen = integers.get(i, (low.as_py(), high.as_py()))
            integers[i] = (min(seen[0], low.as_py()), max(seen[1], high.as_py()))
        return column.to_pylist()  # typed once every batch is read (`_rows`)
    if pa.types.is_floating(t):  # half and single precision: exact as float64, typed FLOAT
        return _typed(column.cast(pa.float64()).to_pylist(), sqltypes.FLOAT)
    if pa.types.is_decimal(t):
        if t.precision > MAX_DECIMAL_DIGITS or not 0 <= t.scale <= t.precision:
            raise InvalidQuery(f"DuckDB holds decimals of at most {MAX_DECIMAL_DIGITS} digits and a scale from 0 "
                               "to their digits; cast it to a narrower decimal, a double or a string")
        return _typed(column.cast(pa.string()).to_pylist(), duckdb.decimal_type(t.precision, t.scale))
    if pa.types.is_date(t):
        days = _storage(column, pa.int32() if pa.types.is_date32(t) else pa.int64())
        if pa.types.is_date64(t):
            if any(d is not None and d % 86_400_000 for d in days):
                raise InvalidQuery("a date64 value is not a whole day")
            days = [None if d is None else d // 86_400_000 for d in days]
        _within(days, _MIN_DAY, _MAX_DAY, "dates from year 1 to 9999")
        return [None if d is None else _EPOCH.date() + datetime.timedelta(days=d) for d in days]
    if pa.types.is_timestamp(t):
        return _timestamps(column)
    if pa.types.is_time(t):
        ticks, per_second = _storage(column, pa.int32() if pa.types.is_time32(t) else pa.int64()), _PER_SECOND[t.unit]
        _within(ticks, 0, 86_400 * per_second - 1, "times of day from 00:00:00 to 23:59:59.999999999")
        if t.unit != "ns":
            return column.to_pylist()  # datetime.time: TIME exactly
        return _typed([None if v is None else f"{_clock(v // per_second)}.{v % per_second:09d}" for v in ticks],
                      sqltypes.TIME_NS)
    if pa.types.is_duration(t):
        ticks, per_second = _storage(column, pa.int64()), _PER_SECOND[t.unit]
        if t.unit == "ns" and any(v is not None and v % 1000 for v in ticks):
            raise InvalidQuery("DuckDB's intervals hold microseconds; this duration has nanoseconds")
        micros = [None if v is None else v * 1_000_000 // per_second for v in ticks]
        _within(micros, -(2 ** 63) + 1, 2 ** 63 - 1, "durations of at most 292,000 years")
        # As text: a timedelta is days and seconds, and DuckDB would keep those days as calendar
        # days (25 hours added across a DST change gave 24 hours of wall clock, or 26).
        return _typed([None if v is None else f"{v} microseconds" for v in micros], sqltypes.INTERVAL)
    if t == pa.month_day_nano_interval():
        intervals = column.to_pylist()
        if any(v is not None and v.nanoseconds % 1000 for v in intervals):
            raise InvalidQuery("DuckDB's intervals hold months, days and microseconds; this one has nanoseconds")
        return _typed([None if v is None else f"{v.months} months {v.days} days {v.nanoseconds // 1000} microseconds"
                       for v in intervals], sqltypes.INTERVAL)
    raise InvalidQuery("DuckDB holds no value of this type exactly; bind a duration, a number or a string")


def _timestamps(column: pa.Array) -> list:
    t = column.type
    per_second = _PER_SECOND[t.unit]
    if t.tz is not None:
        _check_zone(t.tz)
    ticks = _storage(column, pa.int64())
    seconds = [None if v is None else v // per_second for v in ticks]
    _within(seconds, _MIN_DAY * 86_400, (_MAX_DAY + 1) * 86_400 - 1, "timestamps from year 1 to 9999")
    digits = {"s": 0, "ms": 3, "us": 6, "ns": 9}[t.unit]
    if t.tz is not None and t.unit == "ns" and any(v is not None and v % 1000 for v in ticks):
        raise InvalidQuery("DuckDB's timestamps with a time zone hold microseconds; this one has nanoseconds")
    texts = [None if v is None else (_EPOCH + datetime.timedelta(seconds=s)).isoformat(sep=" ")
             + (f".{v % per_second:0{digits}d}" if digits else "") + ("+00" if t.tz is not None else "")
             for v, s in zip(ticks, seconds)]
    return _typed(texts, sqltypes.TIMESTAMP_TZ if t.tz is not None else _TIMESTAMP[t.unit])


def _check_zone(tz: str) -> None:
    """Arrow's zones are IANA names or fixed offsets (+HH:MM); anything else is unknown."""
    if _OFFSET.fullmatch(tz):
        return
    try:
        known = len(tz) <= 64 and zoneinfo.ZoneInfo(tz) is not None
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        known = False
    if not known:
        raise InvalidQuery(f"unknown time zone {tz[:64]!r}: use an IANA name (Europe/Berlin) or an offset (+01:00)")


def _storage(column: pa.Array, kind: pa.DataType) -> list:
    """A temporal column's integers (the view of its buffers, not a conversion)."""
    return column.view(kind).to_pylist()


def _within(values: list, low: int, high: int, what: str) -> None:
    if any(v is not None and not low <= v <= high for v in values):
        raise InvalidQuery(f"DuckDB binds {what}; a value is outside")


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _typed(values: list, kind) -> list:
    return [None if v is None else Value(v, kind) for v in values]


def _session(action: str, body: bytes):
    """The session actions over the fixed session: setting its own values is fine, anything else
    is an error per option, as the spec has it."""
    if action == "GetSessionOptions":
        return messages.GetSessionOptionsResult(session_options=[
            messages.SessionOptionsEntry(key=k, value=messages.SessionOptionValue(string_value=v))
            for k, v in SESSION.items()])
    if action == "CloseSession":
        return messages.CloseSessionResult(status=CLOSED)
    errors = []
    for entry in messages.unpack("SetSessionOptionsRequest", body).session_options:
        if entry.key not in SESSION:
            errors.append((entry.key, INVALID_NAME))
        elif not entry.value.HasField("string_value") or entry.value.string_value != SESSION[entry.key]:
            errors.append((entry.key, INVALID_VALUE))
    return messages.SetSessionOptionsResult(errors=[
        messages.SessionErrorsEntry(key=k, value=messages.SetSessionOptionsError(value=code)) for k, code in errors])


def unsupported(name: str) -> Unsupported:
    return Unsupported(f"Flight SQL {name} is not supported by flight-lstm")


def _no_transaction(message) -> None:
    if message.HasField("transaction_id"):
        raise InvalidQuery("flight-lstm has no transactions: queries are read-only and run on their own")


def _other_catalog(command) -> bool:
    """There are no catalogs: only a request for all (no catalog) or for none ("") matches."""
    return command.HasField("catalog") and command.catalog != ""


def _opt(message, field: str) -> str | None:
    return getattr(message, field) if message.HasField(field) else None
