"""The engine: run a plan in the locked-down DuckDB (database.py), each query on its own cursor
with the source attached read-only, inside a query slot, a time limit and the watchdog's guard.
Results leave as bounded Arrow batches."""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import duckdb
import pyarrow as pa

from flight_lstm.engine import exchange as exchanges
from flight_lstm.engine.database import alive, checked_sql, lost, open_database
from flight_lstm.engine.errors import translated_errors
from flight_lstm.engine.lift import apply_lift
from flight_lstm.engine.limits import Admission, Budget, Limits
from flight_lstm.engine.running import Running, batches as running_batches, stopped_by
from flight_lstm.engine.watchdog import Watchdog
from flight_lstm.errors import DatabaseReplaced
from flight_lstm.plan import Plan
from flight_lstm.sources import Source
from udfs.base import Operator

BATCH_ROWS = 65_536
# Tries a query makes to start: each time the database it took was replaced before it could start
# there (renewals back to back), it waits for the renewal under way and takes the newest.
STARTS = 3
log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        source: Source,
        operators: tuple[Operator, ...],
        *,
        batch_rows: int = BATCH_ROWS,
        memory_limit: str | None = None,
        threads: int | None = None,
        limits: Limits = Limits(),
        max_spill: str | None = None,
    ):
        """`max_spill`: the most DuckDB may write to disk when a query outgrows `memory_limit`, in a
        directory of the engine's own (None: DuckDB's defaults, `.tmp` in the working directory and
        90% of that disk's free space, which a few large queries could fill)."""
        self.source = source
        self.operators = operators
        self.batch_rows = batch_rows
        self.limits = limits
        self.admission = Admission(limits)
        self.watchdog = Watchdog()
        self._spill = tempfile.mkdtemp(prefix="flight-lstm-spill-") if max_spill else None
        self._settings = {"memory_limit": memory_limit, "threads": threads,
                          "temp_directory": self._spill, "max_temp_directory_size": max_spill}
        self._renewing = threading.Lock()
        self._open()

    def _open(self) -> None:
        """A new database, with its own budget checks (connection ids start again in each), taken
        as one pair so no query starts on one with the other's."""
        checks: dict[int, Callable[[], None]] = {}  # connection id -> its query's budget check
        db = open_database(self.source, self.operators, lambda cid: checks.get(cid, _nothing), self._settings)
        self._current = db, checks

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        return self._current[0]

    def _renew(self, broken: duckdb.DuckDBPyConnection) -> None:
        """Replace a database DuckDB invalidated (database.py) with a new one, once however many
        queries find it broken; queries still on the old one end, told to run again."""
        with self._renewing:
            if self.db is not broken:
                return
            log.error("DuckDB invalidated the engine's database after an internal error; opening a new one")
            self.source.forget(broken)  # no query attaches to it now: one that tries starts again
            self._open()
        # Its queries end now, those mid-step interrupted, so it goes at once: each database has its
        # own memory limit, spill allowance and threads, and a step left to run to its end kept them
        # (a busy connection cannot be closed).
        self.watchdog.abandon_on(broken, DatabaseReplaced())
        try:
            broken.close()
        except duckdb.Error:
            pass

    def close(self) -> None:
        """Let go of the source now (the server is stopping); queries still running keep theirs."""
        self.source.close(self.db)
        if self._spill:
            shutil.rmtree(self._spill, ignore_errors=True)

    def schema(self, plan: Plan, params: list | None = None) -> pa.Schema:
        """The result schema, found without running any operator (LIMIT 0 plans but never calls).
        `params` fill the query's `?`/`$1` placeholders: DuckDB binds them, nothing is pasted.
        DuckDB folds constant expressions while planning, so this holds a slot and a budget too."""
        running = self.start(plan, Budget(self.limits), schema_only=True)
        try:
            with running.step(), stopped_by(running.budget), translated_errors(self.source):
                return checked_sql(running.con, plan.sql, params).limit(0).to_arrow_table().schema
        finally:
            running.end()

    def parameters(self, plan: Plan) -> list[str]:
        """The names of the query's placeholders in binding order: "1", "2", ... for `?` and `$n`.
        DuckDB's parser reads them; their types are known only once values are bound."""
        con = self.db.cursor()
        try:
            names = set().union(*(s.named_parameters for s in con.extract_statements(plan.sql)))
        finally:
            con.close()
        return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    def stream(
        self, plan: Plan, cancelled: Callable[[], bool | str] = lambda: False,
        extra_tables: dict[str, pa.Table] | None = None, params: list | None = None, budget: Budget | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Start the query; batches of at most `batch_rows` rows follow as the consumer pulls them.

        The query holds one of the server's slots (`Limits.max_queries`) until its cursor closes:
        when the iterator is exhausted or closed, or the watchdog ends it (cancelled, out of
        time, or a client that stopped reading). `extra_tables` are readable by name, as the
        plan's `local_tables`. `budget`: a time and row allowance shared with other runs of one
        request (default: its own, from the server's limits).
        """
        running = self.start(plan, budget or self.budget(cancelled), extra_tables=extra_tables)
        try:
            # DuckDB runs a blocking query (GROUP BY, ORDER BY) to its end right here, so the
            # watchdog is already on guard.
            with running.step(), stopped_by(running.budget), translated_errors(self.source):
                query = checked_sql(running.con, plan.sql, params)
                # A name given twice (`SELECT a.id, b.id`) DuckDB's schema renames (`id_1`), as
                # GetFlightInfo announces it, and its result does not: ADBC then refused the stream.
                renamed = len({c.lower() for c in query.columns}) < len(query.columns)
                if plan.lift or renamed:  # names and types as announced; LIMIT 0 calls no operator
                    schema = query.limit(0).to_arrow_table().schema
                running.result = (checked_sql(running.con, plan.lift.sql, params) if plan.lift else query
                                  ).to_arrow_reader(self.batch_rows)
        except BaseException:
            running.end()
            raise
        batches = running_batches(running, self.source, schema.names if renamed and not plan.lift else None)
        # A stream dropped before its first batch never runs its `finally`: release it on collection.
        weakref.finalize(batches, running.end)
        if plan.lift:
            return schema, apply_lift(plan.lift, schema, batches, self.operators, running.budget, running.step)
        return (schema if renamed else running.result.schema), batches

    def budget(self, cancelled: Callable[[], bool | str] = lambda: False) -> Budget:
        """A new allowance of time and rows under the server's limits, from now."""
        return Budget(self.limits, cancelled)

    def collect(self, plan: Plan, tables: dict[str, pa.Table]) -> pa.Table:
        """Run to the end with `tables` readable by name, so the query's source connection is
        closed before the caller writes anything (an enrichment chunk)."""
        schema, batches = self.stream(plan, extra_tables=tables)
        return pa.Table.from_batches(list(batches), schema)

    def exchange(self, plan: Plan, schema: pa.Schema, batches: Iterable[pa.RecordBatch],
                 cancelled: Callable[[], bool | str] = lambda: False) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Run a row-wise plan over a client's own batches: (output schema, one output batch per
        input batch, in order). See exchange.py."""
        return exchanges.exchange(self, plan, schema, batches, cancelled)

    def start(self, plan: Plan | None, budget: Budget, *, schema_only: bool = False,
              extra_tables: dict[str, pa.Table] | None = None) -> "Running":
        """Take one of the server's query slots (waiting for it, or ResourceExhausted) and a cursor
        for the plan, under the watchdog's guard; `Running.end` gives all back. A query's first
        statements are the first to meet a database DuckDB invalidated: a new one is opened and
        the query starts there. One whose database was replaced while it waited for its slot
        (closed, or no longer given the source) starts again on the newest; past STARTS tries,
        and for any other failure of DuckDB's, it gets an error of ours."""
        with translated_errors(self.source):
            for _ in range(STARTS):
                db, checks = self._current
                try:
                    return self._start_on(db, checks, plan, budget, schema_only, extra_tables)
                except (duckdb.Error, DatabaseReplaced) as e:
                    if lost(e):
                        self._renew(db)
                    elif not isinstance(e, (duckdb.ConnectionException, DatabaseReplaced)):
                        raise
                    with self._renewing:  # a renewal under way ends before the next try
                        pass
            raise DatabaseReplaced()

    def _start_on(self, db: duckdb.DuckDBPyConnection, checks: dict, plan: Plan | None, budget: Budget,
                  schema_only: bool, extra_tables: dict[str, pa.Table] | None) -> "Running":
        """`start` in `db`, whose budget checks are `checks`: the query keeps both, even if a new
        database replaces them meanwhile."""
        leave = self.admission.enter()
        try:
            if budget.should_stop():  # cancelled (or its caller refused) while it waited: it never runs
                raise budget.stopped()
            con = self.connect(plan, schema_only=schema_only, extra_tables=extra_tables, db=db)
        except BaseException:
            leave()
            raise
        connection_id = None

        def release() -> None:
            checks.pop(connection_id, None)
            self.release(con, plan, leave, db)

        running = None
        try:  # whatever fails from here (no thread left for the watchdog) gives slot and cursor back
            (connection_id,), = con.sql("SELECT current_connection_id()").fetchall()
            checks[connection_id] = budget.check
            running = Running(con, budget, release, db)
            running.unwatch = self.watchdog.watch(running)
        except BaseException:
            if running is None:
                release()
            else:
                running.end()  # gives the slot back, and is no longer counted as running (heap.py)
            raise
        return running

    def check_alive(self) -> None:
        """For health: a database DuckDB invalidated is replaced now (database.py)."""
        db = self.db
        if not alive(db):
            self._renew(db)

    @contextmanager
    def admitted(self, wait: bool = True):
        """A query slot for work done outside a query's cursor (listing the source's tables)."""
        leave = self.admission.enter(wait)
        try:
            yield
        finally:
            leave()

    def connect(self, plan: Plan | None, *, schema_only: bool = False,
                extra_tables: dict[str, pa.Table] | None = None,
                db: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
        """A cursor of `db` (the engine's) in which exactly the plan's source tables (and
        `extra_tables`) are readable. With no plan (DoExchange), or one that reads no source table,
        nothing is attached. Give it back with `release`."""
        db = db or self.db
        con = db.cursor()
        attached = False
        try:
            if _reads_source(plan):
                self.source.attach(db, con, plan, schema_only=schema_only)
                attached = True
            for name, table in (extra_tables or {}).items():
                con.register(name, table)
            return con
        except BaseException:
            con.close()
            if attached:
                self.source.detach(db, plan)
            raise

    def release(self, con: duckdb.DuckDBPyConnection, plan: Plan | None = None,
                leave: Callable[[], None] = lambda: None, db: duckdb.DuckDBPyConnection | None = None) -> None:
        """Close the query's cursor (and any result still open on it), let the source go (from
        the database it attached in: one replaced meanwhile took it along), and give back the
        query's slot."""
        try:
            con.close()
            if _reads_source(plan):
                self.source.detach(db or self.db, plan)
        finally:
            leave()


def _nothing() -> None:
    """The check of a call from no running query (none is made by the planner)."""


def _reads_source(plan: Plan | None) -> bool:
    """Whether a query touches the source at all: `SELECT 1` or `range(10)` need no attachment."""
    return plan is not None and bool(plan.tables or plan.scans)


