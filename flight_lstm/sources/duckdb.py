"""A DuckDB file as the source: attached read-only while queries run and detached `keep_attached`
seconds after the last one ends, so a writer (an enrichment run, a loader) can take the file
between queries. A server keeps it a moment (`serve --keep-attached`, 0.5 s): back-to-back queries
then skip a cold attach, which costs ~3 ms per 100k-row query (attach, cold blocks, detach), ~10%
of a plain scan; a writer then waits for a pause of that length between queries. A job that
writes the file itself (enrichment) lets go at once (0, the default)."""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow as pa

from flight_lstm.errors import DatabaseReplaced, SourceUnavailable
from flight_lstm.identifiers import quote
from flight_lstm.plan.widths import fold
from flight_lstm.plan import Plan
from flight_lstm.sources.base import Source

ALIAS = "lake"
TYPES_KEPT = 4096  # tables' types kept for planning (plan/size.py), all dropped past it
T = TypeVar("T")
# DuckDB's words for a file it cannot trust (a plain duckdb.Error or "Data Corruption Error"): a bad
# block on disk, a torn copy. The source is unavailable then, not the server broken.
_CORRUPT = re.compile(r"Corrupt database file|Data Corruption Error")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a name DuckDB reads unquoted as itself, unless a keyword
log = logging.getLogger(__name__)


def _listed(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Each table as SQL names it: a part bare where DuckDB reads it back as itself (a plain ASCII
    word that is no keyword), quoted otherwise (`"my table"`, `"select"`, `"odd schema"."t.x"`)."""
    keywords = {k for k, in con.execute("SELECT keyword_name FROM duckdb_keywords()").fetchall()}
    rows = con.execute("SELECT table_schema, table_name FROM information_schema.tables "
                       "WHERE table_catalog = ? ORDER BY 1, 2", [ALIAS]).fetchall()
    def part(name: str) -> str:
        return name if _BARE.fullmatch(name) and name.lower() not in keywords else quote(name)
    return [part(name) if schema == "main" else f"{part(schema)}.{part(name)}" for schema, name in rows]


def _types(con: duckdb.DuckDBPyConnection, tables: list[tuple[str, ...]]
           ) -> dict[tuple[str, ...], pa.Schema | None]:
    """Each name bound as DuckDB binds it; only a name whose last part is some table's or view's
    name (ASCII letters folded, as DuckDB matches names) is bound at all: binding a name that is
    none searches the catalog for a near one, and 256 names of 900 characters took 4 s."""
    known = {fold(name) for name, in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ?", [ALIAS]).fetchall()}
    found: dict[tuple[str, ...], pa.Schema | None] = {}
    for table in tables:
        found[table] = None
        if fold(table[-1]) in known:
            try:
                found[table] = con.sql(f"SELECT * FROM {'.'.join(map(quote, table))} LIMIT 0").to_arrow_table().schema
            except duckdb.Error:
                pass
    return found


def _locked_down(paths: list[str]) -> duckdb.DuckDBPyConnection:
    """A DuckDB of the source's own that opens no file but `paths` and nothing on the network."""
    con = duckdb.connect(config={"threads": 1, "autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False, "python_enable_replacements": False})
    con.execute("SET allowed_paths = ?", [paths])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


@dataclass
class _Attachment:
    """The file as one of the engine's databases has it attached."""

    queries: int = 0  # queries using it
    version: tuple | None = None  # the file as it was attached; None: not attached


class DuckDBSource(Source):
    scheme = "duckdb"

    def __init__(self, path: str | Path, keep_attached: float = 0.0):
        if keep_attached < 0:
            raise ValueError("keep_attached is seconds: 0 or more")
        self.path = Path(path).resolve()
        self.keep_attached = keep_attached
        self._lock = threading.Condition()
        # Per database of the engine: a renewal (engine.py) opens a new one while queries on the
        # old one still end, and their ends must not count against the new one's attachment.
        self._attached: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._forgotten: weakref.WeakSet = weakref.WeakSet()
        # A forgotten database's attachment while queries there still read the file.
        self._held: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # The last query's database and when it ended, while a detach is pending; one thread per
        # source waits for it (`_detach_when_idle`), so ending a query starts no thread.
        self._idle: tuple[duckdb.DuckDBPyConnection, float] | None = None
        self._detacher: threading.Thread | None = None
        self._closed = False
        self._lister: duckdb.DuckDBPyConnection | None = None  # `_read`'s own DuckDB, kept
        self._types: dict[tuple[str, ...], pa.Schema | None] = {}  # a table's name -> its types, for:
        self._types_version: tuple | None = None  # the file as the kept types read it

    @classmethod
    def from_uri(cls, uri: str, *, keep_attached: float = 0.0) -> "DuckDBSource":
        parsed = urlparse(uri)
        if parsed.scheme not in ("", cls.scheme):
            raise ValueError(f"not a DuckDB URI: {parsed.scheme}://")
        path = unquote(parsed.netloc + parsed.path) if parsed.scheme else uri
        if not path:
            raise ValueError("a DuckDB source needs a file: duckdb:///abs/path/lake.db")
        return cls(path, keep_attached)

    def tables(self) -> list[str]:
        """The file's tables."""
        return self._read(_listed)[0]

    def table_types(self, tables: list[tuple[str, ...]]) -> dict[tuple[str, ...], pa.Schema]:
        """The types of the tables these names name (parts as written), resolved by DuckDB as the
        query's own connection resolves them (`USE lake`: `lake.t`, `main.t`, a case or a Unicode
        spelling all as DuckDB reads them), in one attachment; kept per spelling while the file
        stays the same. A name is only ever quoted, in a DuckDB with no file or network access but
        the source's own: a path or a URL is no table. Missing: not a table of the file. A file
        that cannot be read now fails the planning as it would fail the query (SourceUnavailable)."""
        version = self._file_version()
        kept = self._types if self._types_version == version else {}  # this call's (others may replace it)
        missing = [t for t in dict.fromkeys(tables) if t not in kept]
        if missing:
            try:  # a failure is the query's: unknown types must not pass as narrow ones
                found, seen = self._read(lambda con: _types(con, missing))
            except duckdb.Error as e:
                raise SourceUnavailable(f"cannot read DuckDB file {self.path.name} now: {_first_line(e)}") from None
            if seen == version:  # else the file a query still holds, which queries started now read too
                kept = {} if len(kept) + len(found) > TYPES_KEPT else kept
                kept.update(found)
                self._types, self._types_version = kept, version
            kept = {**kept, **found}
        return {t: kept[t] for t in tables if kept.get(t) is not None}

    def _read(self, read: Callable[[duckdb.DuckDBPyConnection], T]) -> tuple[T, tuple | None]:
        """`read` on a cursor with the file attached, and the version of the file it read (a query
        may hold the file as it was before it changed: it is kept attached). DuckDB locks the file
        with POSIX locks, which are the process's: closing any descriptor of the file drops them
        all, so a listing that attached the file elsewhere and let go of it freed a running query's
        file for a writer (round 16: one health call, and the query read the writer's rows; round
        28: a types lookup, the same). So the engine's database reads it, attached as for a query;
        before any query there is none, and a DuckDB of the source's own attaches it under the
        source's lock, which every attachment takes (kept: opening a DuckDB trims glibc's heap,
        which waits while a query fills it: 5-7 s beside `list_distinct(range(20000000))`)."""
        for _ in range(3):  # a database replaced meanwhile: the new one reads
            with self._lock:
                db = next(iter(self._attached), None)  # the engine's (a replaced one is forgotten)
                if db is None and self._held:  # round 29: attached alone, letting go dropped their lock
                    raise SourceUnavailable(f"DuckDB file {self.path.name} is being opened again; retry shortly")
                if db is None:
                    return self._read_alone(read)
            con = db.cursor()
            try:
                self.attach(db, con, None)
            except BaseException as e:
                con.close()
                if isinstance(e, DatabaseReplaced):
                    continue
                raise
            try:
                with self._lock:
                    seen = self._attached[db].version if db in self._attached else None
                return read(con), seen
            finally:
                con.close()
                self.detach(db, None)
        raise DatabaseReplaced()

    def _read_alone(self, read: Callable[[duckdb.DuckDBPyConnection], T]) -> tuple[T, tuple | None]:
        """`_read` while no database of the engine's has ever attached the file; under the lock."""
        if self._lister is None:
            self._lister = _locked_down(self.allowed_paths())
        con = self._lister.cursor()
        try:
            seen = self._file_version()
            self._attach(con)
            try:
                con.execute(f"USE {ALIAS}")
                return read(con), seen
            finally:
                con.execute("USE memory")
                con.execute(f"DETACH {ALIAS}")
        except duckdb.Error:
            self._lister = None  # not kept once DuckDB failed in it: the next reading opens one afresh
            raise
        finally:
            con.close()

    def attach(self, db: duckdb.DuckDBPyConnection, con: duckdb.DuckDBPyConnection, plan: Plan | None, *,
               schema_only: bool = False) -> None:
        with self._lock:
            if db in self._forgotten:
                raise DatabaseReplaced()
            self._idle = None
            attached = self._attached.setdefault(db, _Attachment())
            if attached.queries == 0:  # no query is using the attachment: it may be (re)made
                version = self._file_version()
                if attached.version not in (None, version):
                    self._detach_now(db)  # replaced or rewritten while kept: read the file as it is now
                if attached.version is None:
                    self._attach(con)
                    attached.version = version
            con.execute(f"USE {ALIAS}")
            attached.queries += 1

    def detach(self, db: duckdb.DuckDBPyConnection, plan: Plan) -> None:
        with self._lock:
            attached = self._attached.get(db)
            if attached is None:  # forgotten: its attachment went with it, once its queries end
                held = self._held.get(db)
                if held is not None:
                    held.queries -= 1
                    if held.queries <= 0:
                        del self._held[db]
                return
            attached.queries -= 1
            if attached.queries > 0:
                return
            if self.keep_attached == 0 or self._closed:
                try:
                    self._detach_now(db)
                except duckdb.Error as e:  # a database DuckDB invalidated: kept, as the detacher does
                    log.warning("could not detach %s: %s", self.path.name, e)
                return
            self._idle = (db, time.monotonic())
            self._lock.notify()
            start, self._detacher = self._detacher is None, self._detacher or threading.Thread(
                target=self._detach_when_idle, name="flight-lstm-detach", daemon=True)
        if start:  # once per source, and not holding the lock: a thread that cannot start blocks no query
            self._detacher.start()

    def close(self, db: duckdb.DuckDBPyConnection) -> None:
        """Detach now, not from the waiting thread, and from now on as soon as the last query ends:
        a detach while the interpreter exits would run DuckDB in a thread being torn down."""
        with self._lock:
            self._closed = True
            self._idle = None
            self._lock.notify()
            attached = self._attached.get(db)
            if attached is not None and attached.version is not None and attached.queries == 0:
                self._detach_now(db)

    def forget(self, db: duckdb.DuckDBPyConnection) -> None:
        with self._lock:
            attached = self._attached.pop(db, None)
            if attached is not None and attached.queries > 0:  # they still read the file there
                self._held[db] = attached
            self._forgotten.add(db)
            if self._idle is not None and self._idle[0] is db:
                self._idle = None

    def _detach_when_idle(self) -> None:
        """Detach once `keep_attached` seconds pass with no query; a query meanwhile cancels it."""
        with self._lock:
            while not self._closed:
                if self._idle is None:
                    self._lock.wait()
                    continue
                db, since = self._idle
                left = since + self.keep_attached - time.monotonic()
                if left > 0:
                    self._lock.wait(left)
                    continue
                self._idle = None
                try:
                    self._detach_now(db)
                except duckdb.Error as e:  # kept attached; the next pause tries again
                    log.warning("could not detach %s: %s", self.path.name, e)

    def _detach_now(self, db: duckdb.DuckDBPyConnection) -> None:
        with db.cursor() as con:
            con.execute(f"DETACH {ALIAS}")
        self._attached[db].version = None  # only once it is gone: a failed DETACH leaves it in use

    def version(self) -> tuple | None:
        """The file as it is now, unless a query still holds it as it was (the file replaced or
        touched since: queries started meanwhile read the file held, so nothing planned or read
        now may be kept for the file as it is): then None, and nothing is cached."""
        version = self._file_version()
        with self._lock:
            held = [a.version for a in self._attached.values() if a.queries > 0]
        return None if any(v not in (None, version) for v in held) else version

    def _file_version(self) -> tuple:
        """The file and its WAL as the OS sees them: any write or replacement changes one."""
        stats = []
        for path in self.allowed_paths():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                stats.append(None)
            else:
                stats.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stats)

    def allowed_paths(self) -> list[str]:
        """The file and the logs DuckDB reads beside it: its WAL, and (DuckDB 2) the WAL a checkpoint
        writes meanwhile, which attaching after a writer was killed mid-checkpoint reads: refused, it
        had failed a resumed enrichment with "file system operations are disabled"."""
        return [str(self.path), f"{self.path}.wal", f"{self.path}.wal.checkpoint"]

    def _attach(self, con: duckdb.DuckDBPyConnection) -> None:
        if not self.path.is_file():
            raise SourceUnavailable(f"DuckDB file {self.path.name} does not exist")
        literal = str(self.path).replace("'", "''")
        try:
            con.execute(f"ATTACH '{literal}' AS {ALIAS} (READ_ONLY)")
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise SourceUnavailable(
                    f"DuckDB file {self.path.name} is locked by a writer; retry shortly"
                ) from None
            raise SourceUnavailable(f"cannot open DuckDB file {self.path.name}") from None
        except duckdb.Error as e:
            if _CORRUPT.search(str(e)):
                raise SourceUnavailable(f"DuckDB file {self.path.name} is corrupt: {_first_line(e)}") from None
            raise

    def translate_error(self, error: BaseException) -> SourceUnavailable | None:
        """The file failing under a running query (replaced, truncated, gone, corrupt) is the
        source's fault."""
        if str(error).startswith("IO Error"):
            return SourceUnavailable(f"DuckDB file {self.path.name} could not be read: it changed or "
                                     "went away under the query; retry")
        if _CORRUPT.search(str(error)):
            return SourceUnavailable(f"DuckDB file {self.path.name} is corrupt, or changed under the query "
                                     f"({_first_line(error)}); retry")
        return None

    def describe(self) -> str:
        return f"duckdb:{self.path.name}"
