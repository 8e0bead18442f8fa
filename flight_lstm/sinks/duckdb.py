"""A table in the source's DuckDB file. The file is opened for writing only for each commit
(one transaction per chunk) and closed again, so the server, which attaches it read-only while
queries run (and for a moment after), alternates with the run instead of being locked out for the
whole of it."""
from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from flight_lstm.errors import SourceUnavailable
from flight_lstm.identifiers import quote
from flight_lstm.sinks.base import Sink, TargetError
from flight_lstm.sinks.keys import is_text, same_key
from flight_lstm.sources.duckdb import DuckDBSource

# A server query holds the file for a moment; a commit waits this long for it before failing.
OPEN_TIMEOUT = 60.0


class DuckDBTableSink(Sink):
    scheme = "duckdb"

    def __init__(self, path: Path, table: str):
        self.path = Path(path).resolve()
        parts = [p.name for p in sqlglot.parse_one(f"SELECT * FROM {table}", read="duckdb").find(exp.Table).parts]
        if len(parts) > 2:
            raise TargetError(f"a table target is [schema.]table in the source file, got {table!r}")
        self.schema_name, self.table = (parts if len(parts) == 2 else ["main", parts[0]])
        self.ref = f"{quote(self.schema_name)}.{quote(self.table)}"

    @classmethod
    def from_uri(cls, uri: str, *, source_uri: str) -> "DuckDBTableSink":
        try:
            source = DuckDBSource.from_uri(source_uri)
        except ValueError:
            raise TargetError("a table target (--into TABLE) needs a DuckDB source; "
                              "use parquet://, iceberg:// or dremio: for others") from None
        table = uri.removeprefix("duckdb:")
        return cls(source.path, table)

    @property
    def lock_path(self) -> Path:
        # DuckDB lets one process write a file at a time, so every table target in it shares one lock.
        return self.path.with_name(self.path.name + ".enrich.lock")

    def describe(self) -> str:
        return f"duckdb:{self.path.name}:{self.schema_name}.{self.table}"

    def _connect(self, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + OPEN_TIMEOUT
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only)
            except (duckdb.IOException, duckdb.ResourceInUseException) as e:
                # Another process's lock, or this process's own server still attached to the file.
                held = "lock" in str(e).lower() or "already attached" in str(e)
                if not held or time.monotonic() > deadline:
                    raise SourceUnavailable(f"cannot open {self.path.name} for writing: {str(e).splitlines()[0]}") from None
                time.sleep(0.05)

    def schema(self) -> pa.Schema | None:
        if not self.path.is_file():
            raise TargetError(f"DuckDB file {self.path.name} does not exist")
        con = self._connect(read_only=True)
        try:
            if not con.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = ?",
                               [self.schema_name]).fetchall():
                raise TargetError(f"schema {self.schema_name!r} does not exist in {self.path.name}; "
                                  f"create it first (CREATE SCHEMA {quote(self.schema_name)})")
            if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                               [self.schema_name, self.table]).fetchall():
                return None
            return con.sql(f"SELECT * FROM {self.ref} LIMIT 0").to_arrow_table().schema
        finally:
            con.close()

    def read(self, columns: list[str]) -> pa.Table:
        con = self._connect(read_only=True)
        try:
            return con.sql(f"SELECT {', '.join(map(quote, columns))} FROM {self.ref}").to_arrow_table()
        finally:
            con.close()

    def commit(self, rows: pa.Table, keys: list[str], *, replace: bool) -> None:
        con = self._connect(read_only=False)
        try:
            con.register("_rows", rows)
            con.begin()
            con.execute(f"CREATE TABLE IF NOT EXISTS {self.ref} AS SELECT * FROM _rows LIMIT 0")
            if replace:
                match = " AND ".join(same_key(f"r.{quote(k)}", f"t.{quote(k)}",
                                              text=is_text(rows.schema.field(k).type)) for k in keys)
                con.execute(f"DELETE FROM {self.ref} AS t WHERE EXISTS (SELECT 1 FROM _rows AS r WHERE {match})")
            con.execute(f"INSERT INTO {self.ref} BY NAME SELECT * FROM _rows")
            con.commit()
        except duckdb.Error as e:
            raise TargetError(f"cannot write {self.describe()}: {str(e).splitlines()[0]}") from None
        finally:
            con.close()
