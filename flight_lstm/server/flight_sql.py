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

from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.flight as flight

from flight_lstm.errors import InvalidQuery, QueryRefused, Unsupported, text_of
from flight_lstm.server import columns
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.server import flight_sql_metadata as metadata
from flight_lstm.server.prepared import (PARAMETER_BYTES, PARAMETER_ROWS, STATEMENT_TTL, PreparedStatements,
                                         parameter_bytes)
from flight_lstm.server.uploads import received
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

    def do_get(self, name: str, value: bytes, cancelled: Callable[[], bool], user: str | None) -> Stream:
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
        return columns.described(self.service.dataset_schema(name, kind))

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
    is refused as it comes."""
    rows, size = [], 0
    for chunk in reader:
        if chunk.data is None:
            continue
        batch = received(chunk.data)
        for field in batch.schema:
            if not _flat(field.type):
                raise InvalidQuery(f"bind flat values (numbers, strings, binaries, dates and times, NULL); "
                                   f"parameter {field.name!r} is {field.type}")
        # Each value becomes a Python object: a column of NULLs is 0 bytes of Arrow, not of memory.
        size += parameter_bytes(batch.num_rows, batch.num_columns, batch.nbytes)
        if size > PARAMETER_BYTES:
            raise InvalidQuery(f"bound parameters may hold at most {PARAMETER_BYTES:,} bytes, counting "
                               f"each value as the Python object it becomes")
        if len(rows) + batch.num_rows > PARAMETER_ROWS:
            raise InvalidQuery(f"bind at most {PARAMETER_ROWS:,} rows of parameters to one query")
        values = [column.to_pylist() for column in batch.columns]
        rows.extend([column[i] for column in values] for i in range(batch.num_rows))
    if not rows:
        raise InvalidQuery("bind at least one row of parameters to a query, got 0")
    return rows, size


FLAT = (pa.types.is_null, pa.types.is_boolean, pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal,
        pa.types.is_temporal, pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
        pa.types.is_large_binary, pa.types.is_fixed_size_binary)


def _flat(t: pa.DataType) -> bool:
    """A type a placeholder takes, held value by value: nested or encoded columns (lists, structs,
    dictionaries, run-end encoded) hold values that their Arrow size does not count."""
    return any(kind(t) for kind in FLAT)


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
