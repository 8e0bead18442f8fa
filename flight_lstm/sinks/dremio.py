"""A table in Dremio, written through the one Dremio client (flight_lstm/dremio), opened from the
job's `dremio://` source URI (same credentials: DREMIO_PASSWORD or DREMIO_TOKEN).

    --source dremio://USER@HOST:32010 --into dremio:space.folder.table   (parts may be "quoted")

Dremio takes no DoPut and has no transactions: a statement is the unit, each one job and one
Iceberg commit. So a chunk goes as bounded statements (at most STATEMENT_ROWS rows and about
STATEMENT_BYTES of SQL each): CTAS when the table is new, then

    INSERT INTO t (cols) SELECT * FROM (VALUES ...) AS v(cols)
    WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.key = v.key)

A reader may see part of a chunk (the statements that ran), never part of a statement. A run
killed between statements leaves whole statements; the next run reads the keys there and writes
only the others, and the anti-join makes a statement that lands twice (sent again, or finished
by Dremio after its client died) add nothing. So every key lands exactly once, provided a killed
run's last statement has ended in Dremio (committed, or cancelled with its Flight stream) before
the next run writes the same keys: two statements running at once can both pass the anti-join.

Re-scoring deletes a statement's keys, then inserts their new rows (DELETE, then INSERT): between
the two a reader finds those keys missing, and a run killed there leaves them missing until the
next run, which finds them new and writes them.

Values travel as typed literals, so Dremio infers nothing (VALUES would pad strings to CHAR(n)
and narrow integers). Dremio has no literal for NaN or infinity: those are written as NULL.
TIMESTAMP is zone-less and to the millisecond in Dremio: timestamps are written to the
millisecond (truncated), zone-aware ones as UTC, and `_scored_at` reads back as UTC. Lists
(forecast output) are refused: unnest them first.
"""
from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import sqlglot
from sqlglot import exp

from flight_lstm.dremio import DremioClient, parse_uri
from flight_lstm.dremio.names import quote_path
from flight_lstm.errors import InvalidQuery, QueryRefused
from flight_lstm.identifiers import quote
from flight_lstm.sinks.base import LINEAGE, Sink, TargetError

log = logging.getLogger("flight_lstm.sinks.dremio")

STATEMENT_ROWS = 500
STATEMENT_BYTES = 1_000_000


def string(value: str) -> str:
    if "\x00" in value:
        raise TargetError("a string holds a NUL character, which Dremio SQL cannot carry")
    return "'" + value.replace("'", "''") + "'"


class DremioSink(Sink):
    scheme = "dremio"

    def __init__(self, client: DremioClient, parts: tuple[str, ...]):
        self.client, self.parts = client, parts
        self.ref = quote_path(parts)
        self._exists = False  # set by schema(), which a run calls first, and by the CTAS

    @classmethod
    def from_uri(cls, uri: str, *, source_uri: str) -> "DremioSink":
        if not source_uri.startswith(("dremio://", "dremio+tls://")):
            raise TargetError("a Dremio target (--into dremio:space.folder.table) writes through "
                              "the job's Dremio source: use --source dremio://USER@HOST:32010")
        try:
            client = parse_uri(source_uri).client()
        except ValueError as e:
            raise TargetError(f"cannot open the Dremio target: {e}") from None
        return cls(client, _parse_table(uri))

    @property
    def lock_path(self) -> Path:
        # Only runs on this machine are kept apart: Dremio has no lock to take.
        digest = hashlib.sha256(f"{self.client.address}/{'.'.join(self.parts).lower()}".encode()).hexdigest()
        return Path(tempfile.gettempdir()) / f"flight-lstm-dremio-{digest[:16]}.enrich.lock"

    def describe(self) -> str:
        return f"dremio:{self.client.address}:{self.ref}"

    def schema(self) -> pa.Schema | None:
        found = self._read(f'SELECT TABLE_NAME FROM INFORMATION_SCHEMA."TABLES" '
                           f"WHERE LOWER(TABLE_SCHEMA) = {string('.'.join(self.parts[:-1]).lower())} "
                           f"AND LOWER(TABLE_NAME) = {string(self.parts[-1].lower())}")
        self._exists = found.num_rows > 0
        if not self._exists:
            return None
        return _as_written(self._guard(lambda: self.client.schema(f"SELECT * FROM {self.ref}")))

    def read(self, columns: list[str]) -> pa.Table:
        table = self._read(f"SELECT {', '.join(map(quote, columns))} FROM {self.ref}")
        return table.cast(_as_written(table.schema))

    def commit(self, rows: pa.Table, keys: list[str], *, replace: bool) -> None:
        names = ", ".join(map(quote, rows.column_names))
        nulls = {k for k in keys if rows.column(k).null_count}
        on = " AND ".join(f"t.{quote(k)} {'IS NOT DISTINCT FROM' if k in nulls else '='} v.{quote(k)}" for k in keys)
        values, lost = _render(rows)
        if lost:
            log.warning("%s: %d NaN or infinite value(s) written as NULL (Dremio has no literal for them)",
                        self.describe(), lost)
        for start, stop in _statements(values):
            chunk = f"(VALUES {', '.join(values[start:stop])}) AS v({names})"
            if not self._exists:
                self._write(f"CREATE TABLE {self.ref} AS SELECT * FROM {chunk}")
                self._exists = True
                continue
            if replace:
                self._write(f"DELETE FROM {self.ref} WHERE {_matching(rows.slice(start, stop - start), keys)}")
            written = self._write(f"INSERT INTO {self.ref} ({names}) SELECT * FROM {chunk} "
                                  f"WHERE NOT EXISTS (SELECT 1 FROM {self.ref} AS t WHERE {on})")
            if written is not None and written < stop - start:
                log.info("%s: %d row(s) were there already", self.describe(), stop - start - written)

    def _read(self, sql: str) -> pa.Table:
        return self._guard(lambda: self.client.query(sql).read_all())

    def _write(self, sql: str) -> int | None:
        """One statement, run to its end (Dremio runs it on DoGet); its `Records` count if any."""
        result = self._read(sql)
        return result.column("Records")[0].as_py() if "Records" in result.column_names and result.num_rows else None

    def _guard(self, fn: Callable):
        """Dremio's refusals as TargetError; an unreachable Dremio or bad credentials stay as they are."""
        try:
            return fn()
        except (InvalidQuery, QueryRefused) as e:
            raise TargetError(f"{self.describe()}: {e}") from None


def _parse_table(uri: str) -> tuple[str, ...]:
    """`dremio:space.folder.table` as its parts; anything but one table path is refused."""
    text = uri.removeprefix("dremio:")
    usage = f"a Dremio target is dremio:space.folder.table (a space or source, folders, the table), got {uri!r}"
    try:
        statements = sqlglot.parse(f"SELECT * FROM {text}", read="dremio")
    except sqlglot.errors.SqlglotError:
        raise TargetError(usage) from None
    tree = statements[0] if len(statements) == 1 else None
    table = tree.find(exp.Table) if tree is not None else None
    if table is None or table.alias or {k for k, v in tree.args.items() if v} - {"expressions", "from", "from_"}:
        raise TargetError(usage)
    parts = tuple(p.name for p in table.parts)
    if len(parts) < 2 or not all(parts):
        raise TargetError(usage)
    return parts


def _as_written(schema: pa.Schema) -> pa.Schema:
    """Dremio's zone-less millisecond TIMESTAMP as the rows carry it: `_scored_at` was written in UTC."""
    stamped = LINEAGE[1]
    return pa.schema([
        pa.field(f.name, stamped.type if f.name == stamped.name else pa.timestamp("us"))
        if pa.types.is_timestamp(f.type) else f.remove_metadata() for f in schema
    ])


def _sql_type(field: pa.Field) -> str:
    t = field.type
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if t in (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()):
        return "INT"
    if t in (pa.int64(), pa.uint32()):
        return "BIGINT"
    if pa.types.is_float32(t):
        return "FLOAT"
    if pa.types.is_float64(t):
        return "DOUBLE"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_decimal128(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        raise TargetError(f"column {field.name!r} is a list ({t}): the Dremio target writes one value per "
                          "column; unnest it first (e.g. SELECT * FROM forecast_table(...) for forecasts)")
    raise TargetError(f"column {field.name!r} has type {t}, which the Dremio target cannot write; cast it in the query")


def _literal(sql_type: str, nan_seen: list[int]) -> Callable[[object], str]:
    """Renders one column's values as exact, typed Dremio SQL literals."""
    null = f"CAST(NULL AS {sql_type})"

    def render(v) -> str:
        if v is None:
            return null
        if isinstance(v, bool):
            return "TRUE" if v else "FALSE"
        if isinstance(v, float):
            if not math.isfinite(v):
                nan_seen[0] += 1
                return null
            mantissa, _, exponent = repr(v).partition("e")  # repr round-trips; E makes it a DOUBLE literal
            return f"CAST({mantissa}E{int(exponent or 0)} AS {sql_type})"
        if isinstance(v, datetime):
            if v.tzinfo is not None:
                v = v.astimezone(timezone.utc).replace(tzinfo=None)
            return f"TIMESTAMP '{v.isoformat(sep=' ', timespec='milliseconds')}'"
        if isinstance(v, date):
            return f"DATE '{v.isoformat()}'"
        if isinstance(v, str):
            return f"CAST({string(v)} AS {sql_type})"
        if sql_type.startswith("DECIMAL"):
            return f"CAST({format(v, 'f')} AS {sql_type})"
        return f"CAST({int(v)} AS {sql_type})"

    return render


def _render(rows: pa.Table) -> tuple[list[str], int]:
    """Each row as `(v1, v2, ...)`, and how many NaN/infinite values became NULL."""
    nan_seen = [0]
    columns = [list(map(_literal(_sql_type(f), nan_seen), rows.column(f.name).to_pylist())) for f in rows.schema]
    return [f"({', '.join(row)})" for row in zip(*columns)], nan_seen[0]


def _statements(values: list[str]) -> Iterator[tuple[int, int]]:
    """[start, stop) of each statement: at most STATEMENT_ROWS rows and STATEMENT_BYTES of values
    (a single larger row still goes, alone)."""
    start, size = 0, 0
    for i, value in enumerate(values):
        length = len(value.encode()) + 2
        if i > start and (i - start >= STATEMENT_ROWS or size + length > STATEMENT_BYTES):
            yield start, i
            start, size = i, 0
        size += length
    if start < len(values):
        yield start, len(values)


def _matching(rows: pa.Table, keys: list[str]) -> str:
    """A WHERE condition true for exactly the keys of `rows`."""
    render = {k: _literal(_sql_type(rows.schema.field(k)), [0]) for k in keys}
    if len(keys) == 1:
        k, values = keys[0], rows.column(keys[0]).to_pylist()
        present = [render[k](v) for v in values if v is not None]
        terms = [f"{quote(k)} IN ({', '.join(present)})"] if present else []
        return " OR ".join(terms + ([f"{quote(k)} IS NULL"] if len(present) < len(values) else []))
    return " OR ".join(
        "(" + " AND ".join(f"{quote(k)} IS NULL" if v is None else f"{quote(k)} = {render[k](v)}"
                           for k, v in row.items()) + ")"
        for row in rows.select(keys).to_pylist())
