"""A small SQLAlchemy dialect for flight-lstm over the ADBC Flight SQL driver, so Superset (or any
SQLAlchemy tool) can list schemas, tables and views with their column types and run SQL.

    flight_lstm://127.0.0.1:8815                      plain gRPC
    flight_lstm://ana:secret@host:8815?tls=true       TLS, with a --auth-file login

Registered as the `flight_lstm` entry point in the `sqlalchemy.dialects` group. It needs only
SQLAlchemy (1.4 or 2.x), pyarrow and `adbc-driver-flightsql`: nothing else of flight-lstm is
imported, so it installs beside Superset without torch (`pip install --no-deps flight-lstm`).
Other query parameters are passed to the driver as database options, e.g.
`?adbc.flight.sql.client_option.tls_skip_verify=true`.

Reflection comes from Flight SQL's catalog RPCs (ADBC `get_objects` and `get_table_schema`), whose
Arrow types map to SQLAlchemy types. SQL is DuckDB's; the generic compiler (double-quoted
identifiers, LIMIT/OFFSET) fits it; tables of the schema `main` are rendered unqualified (see
FlightLstmIdentifierPreparer). The server has no transactions, so commit and rollback are no-ops.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
from sqlalchemy import exc
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import default, reflection
from sqlalchemy.sql import compiler

DEFAULT_SCHEMA = "main"


class NamedType(sqltypes.UserDefinedType):
    """A type SQLAlchemy has no class for (STRUCT, MAP, ...), under the server's name for it."""

    cache_ok = True

    def __init__(self, name: str):
        self.name = name

    def get_col_spec(self, **kw) -> str:
        return self.name


def column_type(field: pa.Field) -> sqltypes.TypeEngine:
    """A column's SQLAlchemy type: from its Arrow type, else the Flight SQL type name the server sends."""
    found = arrow_to_sqlalchemy(field.type)
    if isinstance(found, sqltypes.NullType):
        name = (field.metadata or {}).get(b"ARROW:FLIGHT:SQL:TYPE_NAME")
        return NamedType(name.decode()) if name else found
    return found


def arrow_to_sqlalchemy(dtype: pa.DataType) -> sqltypes.TypeEngine:
    """The SQLAlchemy type for an Arrow type (dictionary columns as their value type); NullType
    for those it has no class for."""
    t = pa.types
    if t.is_dictionary(dtype):
        return arrow_to_sqlalchemy(dtype.value_type)
    if t.is_boolean(dtype):
        return sqltypes.Boolean()
    if t.is_int8(dtype) or t.is_int16(dtype) or t.is_uint8(dtype):
        return sqltypes.SmallInteger()
    if t.is_int32(dtype) or t.is_uint16(dtype):
        return sqltypes.Integer()
    if t.is_integer(dtype):
        return sqltypes.BigInteger()
    if t.is_float16(dtype) or t.is_float32(dtype):
        return sqltypes.REAL()
    if t.is_float64(dtype):
        return sqltypes.Float()
    if t.is_decimal(dtype):
        return sqltypes.Numeric(precision=dtype.precision, scale=dtype.scale)
    if t.is_string(dtype) or t.is_large_string(dtype) or getattr(t, "is_string_view", lambda _: False)(dtype):
        return sqltypes.String()
    if t.is_binary(dtype) or t.is_large_binary(dtype) or t.is_fixed_size_binary(dtype):
        return sqltypes.LargeBinary()
    if t.is_timestamp(dtype):
        return sqltypes.DateTime(timezone=dtype.tz is not None)
    if t.is_date(dtype):
        return sqltypes.Date()
    if t.is_time(dtype):
        return sqltypes.Time()
    if t.is_duration(dtype) or t.is_interval(dtype):
        return sqltypes.Interval()
    if t.is_list(dtype) or t.is_large_list(dtype) or t.is_fixed_size_list(dtype):
        item = arrow_to_sqlalchemy(dtype.value_type)
        return item if isinstance(item, sqltypes.NullType) else sqltypes.ARRAY(item)
    return sqltypes.NullType()


class FlightLstmIdentifierPreparer(compiler.IdentifierPreparer):
    """Renders tables of the default schema unqualified: `review_scores`, not `main.review_scores`.

    The server resolves `FROM main.review_scores` but not a column qualified through the schema
    (`main.review_scores.id`) when review_scores is a published view, and SQLAlchemy qualifies
    columns that way. Unqualified names mean the same table, so nothing else changes.
    """

    def schema_for_object(self, obj):
        schema = getattr(obj, "schema", None)
        return None if schema == DEFAULT_SCHEMA else schema


class FlightLstmTypeCompiler(compiler.GenericTypeCompiler):
    """DuckDB's names for the types above (the generic compiler has no ARRAY at all)."""

    def visit_float(self, type_, **kw):
        return "REAL" if type_.precision is not None and type_.precision <= 24 else "DOUBLE"

    def visit_datetime(self, type_, **kw):
        return "TIMESTAMP WITH TIME ZONE" if type_.timezone else "TIMESTAMP"

    def visit_interval(self, type_, **kw):
        return "INTERVAL"

    def visit_ARRAY(self, type_, **kw):
        return f"{self.process(type_.item_type, **kw)}[]"


class FlightLstmDialect(default.DefaultDialect):
    name = "flight_lstm"
    driver = "adbc"
    default_paramstyle = "qmark"
    supports_statement_cache = True
    supports_native_boolean = True
    supports_native_decimal = True
    supports_alter = False
    supports_sequences = False
    supports_default_values = False
    supports_empty_insert = False
    supports_multivalues_insert = False
    postfetch_lastrowid = False
    returns_unicode_strings = True
    description_encoding = None
    default_schema_name = DEFAULT_SCHEMA
    preparer = FlightLstmIdentifierPreparer
    type_compiler = FlightLstmTypeCompiler  # SQLAlchemy 1.4
    type_compiler_cls = FlightLstmTypeCompiler  # SQLAlchemy 2.x

    @classmethod
    def import_dbapi(cls):  # SQLAlchemy 2.x
        import adbc_driver_flightsql.dbapi

        return adbc_driver_flightsql.dbapi

    @classmethod
    def dbapi(cls):  # SQLAlchemy 1.4 (2.x prefers import_dbapi and never calls this)
        return cls.import_dbapi()

    def create_connect_args(self, url) -> tuple[list, dict[str, Any]]:
        options = dict(url.query)
        tls = str(options.pop("tls", "false")).lower() in ("1", "true", "yes")
        uri = f"{'grpc+tls' if tls else 'grpc'}://{url.host or '127.0.0.1'}:{url.port or 8815}"
        db_kwargs = {k: str(v) for k, v in options.items()}
        if url.username:
            db_kwargs["username"] = url.username
            db_kwargs["password"] = url.password or ""
        return [uri], {"db_kwargs": db_kwargs, "autocommit": True}

    # -- no transactions on the server ------------------------------------------------------------
    def do_begin(self, dbapi_connection) -> None:
        pass

    def do_commit(self, dbapi_connection) -> None:
        pass

    def do_rollback(self, dbapi_connection) -> None:
        pass

    def get_isolation_level(self, dbapi_connection) -> str:
        return "AUTOCOMMIT"

    def _get_default_schema_name(self, connection) -> str:
        return DEFAULT_SCHEMA

    def _get_server_version_info(self, connection):
        return None

    def _check_unicode_returns(self, connection, additional_tests=None) -> bool:  # SQLAlchemy 1.4
        return True

    def _check_unicode_description(self, connection) -> bool:  # SQLAlchemy 1.4
        return True

    # -- reflection -----------------------------------------------------------------------------
    @staticmethod
    def _adbc(connection):
        """The ADBC DB-API connection under a SQLAlchemy Connection."""
        raw = connection.connection
        return getattr(raw, "dbapi_connection", None) or raw.connection

    def _objects(self, connection, depth: str, schema: str | None = None,
                 table_types: list[str] | None = None) -> list[dict]:
        reader = self._adbc(connection).adbc_get_objects(
            depth=depth, db_schema_filter=schema, table_types_filter=table_types)
        return reader.read_all().to_pylist()

    def get_schema_names(self, connection, **kw) -> list[str]:
        names = {s["db_schema_name"] for c in self._objects(connection, "db_schemas")
                 for s in c["catalog_db_schemas"] or []}
        return sorted(names)

    def _relations(self, connection, schema: str | None, kind: str) -> list[str]:
        schema = schema or DEFAULT_SCHEMA
        return [t["table_name"]
                for c in self._objects(connection, "tables", schema, [kind])
                for s in c["catalog_db_schemas"] or [] if s["db_schema_name"] == schema
                for t in s["db_schema_tables"] or [] if t["table_type"] == kind]

    # (No annotations on @reflection.cache methods: SQLAlchemy 1.4 re-parses their signature.)
    @reflection.cache
    def get_table_names(self, connection, schema=None, **kw):
        return self._relations(connection, schema, "TABLE")

    @reflection.cache
    def get_view_names(self, connection, schema=None, **kw):
        return self._relations(connection, schema, "VIEW")

    def has_table(self, connection, table_name: str, schema: str | None = None, **kw) -> bool:
        return table_name in (self.get_table_names(connection, schema)
                              + self.get_view_names(connection, schema))

    @reflection.cache
    def get_columns(self, connection, table_name, schema=None, **kw):
        # Names are search patterns in Flight SQL (`_` matches any character), but ADBC keeps only
        # the table whose schema and name equal them exactly; _relations filters exactly too.
        try:
            arrow_schema = self._adbc(connection).adbc_get_table_schema(
                table_name, db_schema_filter=schema or DEFAULT_SCHEMA)
        except self.import_dbapi().ProgrammingError as e:  # NOT_FOUND
            raise exc.NoSuchTableError(table_name) from e
        return [{"name": f.name, "type": column_type(f), "nullable": f.nullable,
                 "default": None, "autoincrement": False, "comment": None} for f in arrow_schema]

    def get_view_definition(self, connection, view_name: str, schema: str | None = None, **kw):
        return None  # the server publishes views by name and schema, not their SQL

    # No keys, indexes or constraints are declared.
    def get_pk_constraint(self, connection, table_name, schema=None, **kw) -> dict:
        return {"constrained_columns": [], "name": None}

    def get_foreign_keys(self, connection, table_name, schema=None, **kw) -> list:
        return []

    def get_indexes(self, connection, table_name, schema=None, **kw) -> list:
        return []

    def get_unique_constraints(self, connection, table_name, schema=None, **kw) -> list:
        return []

    def get_check_constraints(self, connection, table_name, schema=None, **kw) -> list:
        return []

    def get_table_comment(self, connection, table_name, schema=None, **kw) -> dict:
        return {"text": None}


dialect = FlightLstmDialect
