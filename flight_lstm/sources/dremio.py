"""Dremio as the source, over its Arrow Flight endpoint (port 32010), through the one Dremio
client (flight_lstm/dremio: auth, cookies, retry, error translation, URI and credentials).

The planner pushes the table-reading part of a query down to Dremio as `plan.scans`, pairs of
(local name, SQL in Dremio's dialect). Each scan is one Flight query, GetFlightInfo (where Dremio
prepares and validates) then DoGet on its one endpoint, and is registered in the per-query DuckDB
connection under its local name as a streaming RecordBatchReader.

No secret (password, token, a URI holding a password) ever reaches a log line, an error message or
`describe()`.

Dremio's system tables (`sys`: every user's jobs and their SQL, reflections, options;
`INFORMATION_SCHEMA`: the whole catalog) are neither listed nor read, unless the operator sets
`?system_tables=true` on the source URI. The check is made on the text that is about to go to
Dremio (every scan, every column look-up), read back with sqlglot's Dremio parser: a path whose
folders (any part but the last, split at dots, compared as Dremio compares names, ignoring case) name
`sys` or `INFORMATION_SCHEMA` is refused with QueryRefused, before anything is sent.
"""
from __future__ import annotations

import time

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from flight_lstm.dremio import DremioClient, parse_uri
from flight_lstm.dremio.errors import stream_error
from flight_lstm.dremio.names import names_system_schema, quote_path, split_schema
from flight_lstm.errors import FlightLSTMError, InvalidQuery, QueryRefused
from flight_lstm.plan import Plan
from flight_lstm.sources.base import Source

CACHE_SECONDS = 30.0
CACHE_ENTRIES = 1024


class DremioSource(Source):
    scheme = "dremio"
    pushdown_dialect = "dremio"

    def __init__(self, client: DremioClient, *, system_tables: bool = False):
        self.client = client
        self.system_tables = system_tables  # whether queries may read Dremio's system tables
        self._cache: dict = {}

    @classmethod
    def from_uri(cls, uri: str, *, keep_attached: float = 0.0) -> "DremioSource":
        """`dremio[+tls]://USER@HOST:32010[?options]`, as flight_lstm/dremio/uri.py reads it, with
        `system_tables=true` letting queries read (and listings show) Dremio's `sys` and
        `INFORMATION_SCHEMA` tables, which are refused otherwise. A scan holds nothing after its
        query, so there is nothing to keep attached."""
        settings = parse_uri(uri)
        return cls(settings.client(), system_tables=settings.system_tables)

    # -- the Source interface

    def attach(self, db: duckdb.DuckDBPyConnection, con: duckdb.DuckDBPyConnection, plan: Plan | None, *,
               schema_only: bool = False) -> None:
        """Register each of `plan.scans` in `con` under its local name: a reader that streams
        Dremio's result as DuckDB pulls it (DoGet starts on the first pull), or with `schema_only`
        an empty table of the schema Dremio announced (GetFlightInfo only, no job runs).

        Every scan is prepared before any is registered, so bad SQL fails here, as InvalidQuery.
        A registered reader can be scanned once only: the local query must read each scan once.
        """
        if plan is None:
            return
        for _, sql in plan.scans:
            self._check(sql)
        infos = [(name, self.client.flight_info(sql)) for name, sql in plan.scans]
        for name, info in infos:
            data = info.schema.empty_table() if schema_only else self.client.reader(info)
            con.register(name, data)

    def tables(self) -> list[str]:
        """Dremio's tables and views as dotted paths, parts quoted where Dremio needs it."""
        return self._cached(("tables",), self._list_tables)

    def _list_tables(self) -> list[str]:
        rows = self.client.query(
            'SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM INFORMATION_SCHEMA."TABLES" '
            "ORDER BY TABLE_SCHEMA, TABLE_NAME"
        ).read_all().to_pylist()
        # TABLE_SCHEMA joins the path with bare dots ("Samples.samples.dremio.com"), so a part that
        # holds dots is told apart by the folders SCHEMATA lists (every level is a schema there).
        try:
            known = {
                r["SCHEMA_NAME"].lower()
                for r in self.client.query("SELECT SCHEMA_NAME FROM INFORMATION_SCHEMA.SCHEMATA").read_all().to_pylist()
            }
        except InvalidQuery:
            known = set()
        names = []
        for row in rows:
            parts = split_schema(row["TABLE_SCHEMA"], known)
            system = row.get("TABLE_TYPE") == "SYSTEM_TABLE" or names_system_schema([*parts, row["TABLE_NAME"]])
            if system and not self.system_tables:
                continue
            names.append(quote_path((*parts, row["TABLE_NAME"])))
        return names

    def table_types(self, tables: list[tuple[str, ...]]) -> dict[tuple[str, ...], pa.Schema]:
        """The schema Dremio announces for `SELECT *` of each table, the look-up pushdown makes too;
        a name Dremio refuses or cannot answer for is missing, and kept so for as long."""
        found = {t: self._cached(("types", t), lambda t=t: self._types_of(t)) for t in dict.fromkeys(tables)}
        return {t: s for t, s in found.items() if s is not None}

    def _types_of(self, table: tuple[str, ...]) -> pa.Schema | None:
        try:
            return self._announced(f"SELECT * FROM {quote_path(table)}")
        except FlightLSTMError:
            return None

    def columns(self, table: str) -> list[str]:
        return self._announced(f"SELECT * FROM {table}").names

    def _announced(self, sql: str) -> pa.Schema:
        """The schema Dremio announces for `sql` (GetFlightInfo only, cached briefly)."""
        self._check(sql)
        return self._cached(("schema", sql), lambda: self.client.schema(sql))

    def _check(self, sql: str) -> None:
        """Refuse, before it is sent, a statement that is not one query reading Dremio tables by
        their paths, or that reads a system table (without ?system_tables=true)."""
        try:
            statements = [s for s in sqlglot.parse(sql, read="dremio") if s is not None]
        except (ParseError, TokenError, RecursionError):
            statements = []
        if len(statements) != 1 or not isinstance(statements[0], exp.Query):
            raise QueryRefused("only one query is sent to Dremio at a time; this text is not one")
        tree = statements[0]
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            if not isinstance(table.this, (exp.Identifier, exp.Dot)) or any(
                    not isinstance(p, exp.Identifier) for p in table.this.find_all(exp.Expression)
                    if not isinstance(p, exp.Dot)):
                raise QueryRefused("a table function is not sent to Dremio; name a table or view")
            parts = [p.name for p in table.parts]
            if len(parts) == 1 and parts[0].lower() in ctes:
                continue
            if not self.system_tables and names_system_schema(parts):
                shown = quote_path(parts)[:120]
                raise QueryRefused(f"{shown} is a Dremio system table: queries may not read Dremio's sys "
                                   "or INFORMATION_SCHEMA unless the source URI sets system_tables=true")

    def translate_error(self, error: BaseException) -> FlightLSTMError | None:
        return stream_error(error)

    def _cached(self, key, compute):
        """Metadata is asked for on every plan; remember it for CACHE_SECONDS, and no longer: a
        client naming tables in ever new spellings must not grow the cache for good."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] > CACHE_SECONDS:
            self._cache = {k: v for k, v in self._cache.items() if now - v[0] <= CACHE_SECONDS}
            if len(self._cache) >= CACHE_ENTRIES:  # a query's table names are the client's to choose
                self._cache = {}
            hit = self._cache[key] = (now, compute())
        return hit[1]

    def describe(self) -> str:
        return self.client.describe()

    # -- direct use

    def schema(self, sql: str) -> pa.Schema:
        return self.client.schema(sql)

    def query(self, sql: str) -> pa.RecordBatchReader:
        return self.client.query(sql)
