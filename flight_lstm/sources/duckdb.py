"""A DuckDB file as the source: attached read-only while queries run and detached `keep_attached`
seconds after the last one ends, so a writer (an enrichment run, a loader) can take the file
between queries. A server keeps it a moment (`serve --keep-attached`, 0.5 s): back-to-back queries
then skip a cold attach, which costs ~3 ms per 100k-row query (attach, cold blocks, detach), ~10%
of a plain scan; a writer then waits for a pause of that length between queries. A job that
writes the file itself (enrichment) lets go at once (0, the default)."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb

from flight_lstm.errors import SourceUnavailable
from flight_lstm.plan import Plan
from flight_lstm.sources.base import Source

ALIAS = "lake"
log = logging.getLogger(__name__)


class DuckDBSource(Source):
    scheme = "duckdb"

    def __init__(self, path: str | Path, keep_attached: float = 0.0):
        if keep_attached < 0:
            raise ValueError("keep_attached is seconds: 0 or more")
        self.path = Path(path).resolve()
        self.keep_attached = keep_attached
        self._lock = threading.Condition()
        self._queries = 0  # queries that have the file attached in the engine's database
        self._attached_version: tuple | None = None  # the file as it was attached; None: not attached
        # The last query's database and when it ended, while a detach is pending; one thread per
        # source waits for it (`_detach_when_idle`), so ending a query starts no thread.
        self._idle: tuple[duckdb.DuckDBPyConnection, float] | None = None
        self._detacher: threading.Thread | None = None
        self._closed = False

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
        con = duckdb.connect()
        try:
            self._attach(con)
            rows = con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_catalog = ? ORDER BY 1, 2",
                [ALIAS],
            ).fetchall()
        finally:
            con.close()
        return [name if schema == "main" else f"{schema}.{name}" for schema, name in rows]

    def attach(self, con: duckdb.DuckDBPyConnection, plan: Plan | None, *, schema_only: bool = False) -> None:
        with self._lock:
            self._idle = None
            if self._queries == 0:  # no query is using the attachment: it may be (re)made
                version = self.version()
                if self._attached_version not in (None, version):
                    self._detach_now(con)  # replaced or rewritten while kept: read the file as it is now
                if self._attached_version is None:
                    self._attach(con)
                    self._attached_version = version
            con.execute(f"USE {ALIAS}")
            self._queries += 1

    def detach(self, db: duckdb.DuckDBPyConnection, plan: Plan) -> None:
        with self._lock:
            self._queries -= 1
            if self._queries > 0:
                return
            if self.keep_attached == 0 or self._closed:
                self._detach_now(db)
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
            if self._attached_version is not None and self._queries == 0:
                self._detach_now(db)

    def forget(self) -> None:
        with self._lock:
            self._attached_version, self._queries, self._idle = None, 0, None

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
        self._attached_version = None  # only once it is gone: a failed DETACH leaves it in use

    def version(self) -> tuple:
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

    def translate_error(self, error: BaseException) -> SourceUnavailable | None:
        """The file failing under a running query (replaced, truncated, gone) is the source's fault."""
        if str(error).startswith("IO Error"):
            return SourceUnavailable(f"DuckDB file {self.path.name} could not be read: it changed or "
                                     "went away under the query; retry")
        return None

    def describe(self) -> str:
        return f"duckdb:{self.path.name}"
