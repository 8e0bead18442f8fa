"""Run a plan in the engine's DuckDB: one in-memory database per server with the operators
registered, file access off (but for the source's own files) and its configuration locked; each
query gets its own cursor with the source attached read-only. Results leave as bounded Arrow
batches.

One database, not one per query: creating a DuckDB database costs ~35 ms of CPU, a cursor almost
nothing, so short queries stay short."""
from __future__ import annotations

import inspect
import re
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import duckdb
import pyarrow as pa

from flight_lstm.apply import apply_lift
from flight_lstm.errors import FlightLSTMError, InvalidQuery, QueryCancelled, QueryRefused, ResourceExhausted
from flight_lstm.limits import Admission, Budget, Limits
from flight_lstm.models.checks import checked_between_batches
from flight_lstm.plan import Plan
from flight_lstm.sources import Source
from udfs.base import Operator, constant

BATCH_ROWS = 65_536


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
    ):
        self.source = source
        self.operators = operators
        self.batch_rows = batch_rows
        self.limits = limits
        self.admission = Admission(limits)
        self.watchdog = Watchdog()
        self._checks: dict[int, Callable[[], None]] = {}  # connection id -> its query's budget check
        self.db = _database(source, operators, self._check_of,
                            {"memory_limit": memory_limit, "threads": threads})

    def _check_of(self, connection_id: int) -> Callable[[], None]:
        return self._checks.get(connection_id, _nothing)

    def close(self) -> None:
        """Let go of the source now (the server is stopping); queries still running keep theirs."""
        self.source.close(self.db)

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

    def stream(
        self, plan: Plan, cancelled: Callable[[], bool] = lambda: False,
        extra_tables: dict[str, pa.Table] | None = None, params: list | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Start the query; batches of at most `batch_rows` rows follow as the consumer pulls them.

        The query holds one of the server's slots (`Limits.max_queries`) until its cursor closes:
        when the iterator is exhausted or closed, or the watchdog ends it (cancelled, out of
        time, or a client that stopped reading). `extra_tables` are readable by name, as the
        plan's `local_tables`.
        """
        running = self.start(plan, Budget(self.limits, cancelled), extra_tables=extra_tables)
        try:
            # DuckDB runs a blocking query (GROUP BY, ORDER BY) to its end right here, so the
            # watchdog is already on guard.
            with running.step(), stopped_by(running.budget), translated_errors(self.source):
                if plan.lift:  # names and types as the query wrote them; LIMIT 0 calls no operator
                    schema = checked_sql(running.con, plan.sql, params).limit(0).to_arrow_table().schema
                sql = plan.lift.sql if plan.lift else plan.sql
                running.result = checked_sql(running.con, sql, params).to_arrow_reader(self.batch_rows)
        except BaseException:
            running.end()
            raise
        batches = _batches(running, self.source)
        # A stream dropped before its first batch never runs its `finally`: release it on collection.
        weakref.finalize(batches, running.end)
        if plan.lift:
            return schema, apply_lift(plan.lift, schema, batches, self.operators, running.budget)
        return running.result.schema, batches

    def start(self, plan: Plan | None, budget: Budget, *, schema_only: bool = False,
              extra_tables: dict[str, pa.Table] | None = None) -> "Running":
        """Take one of the server's query slots (waiting for it, or ResourceExhausted) and a cursor
        for the plan, under the watchdog's guard; `Running.end` gives all back."""
        leave = self.admission.enter()
        try:
            con = self.connect(plan, schema_only=schema_only, extra_tables=extra_tables)
        except BaseException:
            leave()
            raise
        (connection_id,), = con.sql("SELECT current_connection_id()").fetchall()
        self._checks[connection_id] = budget.check

        def release() -> None:
            self._checks.pop(connection_id, None)
            self.release(con, plan, leave)

        running = Running(con, budget, release)
        running.unwatch = self.watchdog.watch(running)
        return running

    @contextmanager
    def admitted(self):
        """A query slot for work done outside a query's cursor (listing the source's tables)."""
        leave = self.admission.enter()
        try:
            yield
        finally:
            leave()

    def connect(self, plan: Plan | None, *, schema_only: bool = False,
                extra_tables: dict[str, pa.Table] | None = None) -> duckdb.DuckDBPyConnection:
        """A cursor in which exactly the plan's source tables (and `extra_tables`) are readable.
        With no plan (DoExchange), or one that reads no source table, nothing is attached. Give it
        back with `release`."""
        con = self.db.cursor()
        attached = False
        try:
            if _reads_source(plan):
                self.source.attach(con, plan, schema_only=schema_only)
                attached = True
            for name, table in (extra_tables or {}).items():
                con.register(name, table)
            return con
        except BaseException:
            con.close()
            if attached:
                self.source.detach(self.db, plan)
            raise

    def release(self, con: duckdb.DuckDBPyConnection, plan: Plan | None = None,
                leave: Callable[[], None] = lambda: None) -> None:
        """Close the query's cursor (and any result still open on it), let the source go, and give
        back the query's slot."""
        try:
            con.close()
            if _reads_source(plan):
                self.source.detach(self.db, plan)
        finally:
            leave()


def _reads_source(plan: Plan | None) -> bool:
    """Whether a query touches the source at all: `SELECT 1` or `range(10)` need no attachment."""
    return plan is not None and bool(plan.tables or plan.scans)


def _nothing() -> None:
    """The check of a call from no running query (none is made by the planner)."""


def _database(source: Source, operators, check_of, settings: dict) -> duckdb.DuckDBPyConnection:
    """The engine's locked-down database. The second lock behind the planner: even SQL the planner
    let through cannot read or write files (but the source's own), install or load extensions,
    scan Python variables, or change a setting."""
    db = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "python_enable_replacements": False,
        **{k: v for k, v in settings.items() if v is not None},
    })
    for op in operators:
        _register(db, op, check_of)
    paths = source.allowed_paths()
    if paths:
        db.execute("SET allowed_paths = ?", [paths])
    db.execute("SET enable_external_access = false")
    db.execute("SET lock_configuration = true")
    return db


def checked_sql(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> duckdb.DuckDBPyRelation:
    """The one way a plan's SQL reaches DuckDB: the planner already had DuckDB's parser read it
    (plan/duckdb_check.py); here the connection that runs it must see exactly one SELECT too, so
    no path can hand the engine a second statement."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error:
        statements = None  # let the query itself report the syntax error
    if statements is not None and (len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT):
        raise QueryRefused("queries are read-only: only one SELECT statement is allowed")
    return con.sql(sql, params=params)


class Running:
    """A query in flight: its cursor, its result reader, its budget and its slot, given back once
    by `end`, whichever comes first: the stream's end, its collection, or the watchdog.

    Work on the cursor happens inside `step()`. The watchdog's `stop` interrupts a step mid-way;
    a query between steps is waiting on its client (not reading, or not sending), and is ended
    at once: result and cursor closed, source let go, slot freed. The client's next move gets
    the reason."""

    def __init__(self, con: duckdb.DuckDBPyConnection, budget: Budget, release: Callable[[], None]):
        self.con, self.budget, self._release = con, budget, release
        self.result = None  # a reader over the cursor's result: it outlives a closed cursor
        self.unwatch: Callable[[], None] = lambda: None
        self._busy = threading.Lock()
        self._ended = False
        self._stopped: Exception | None = None  # why the watchdog ended it, kept for the client

    @contextmanager
    def step(self):
        with self._busy:
            if self._ended:
                raise self._stopped or self.budget.stopped()
            try:
                yield
            finally:
                self.budget.touch()  # idle time is the client's, counted from the end of our work

    def due(self) -> bool:
        """Whether the watchdog should stop it: cancelled or out of time, or idle between steps
        (a long blocking step is the server's work, not a silent client)."""
        budget = self.budget
        return budget.should_stop() or (not self._busy.locked() and budget.idle())

    def stop(self) -> None:
        self.con.interrupt()
        if self._busy.acquire(blocking=False):  # between steps: nothing runs on the cursor
            try:
                self._stopped = self._stopped or self.budget.stopped()
                self.end()
            finally:
                self._busy.release()

    def end(self) -> None:
        with _ending:
            if self._ended:
                return
            self._ended = True
        try:
            self.unwatch()
            if self.result is not None:
                self.result.close()  # DuckDB's result goes now, not when a collector finds it
        finally:
            self._release()


_ending = threading.Lock()


def _batches(running: Running, source: Source) -> Iterator[pa.RecordBatch]:
    try:
        with stopped_by(running.budget), translated_errors(source):
            while True:
                running.budget.touch()
                with running.step():
                    try:
                        batch = running.result.read_next_batch()
                    except StopIteration:
                        return
                running.budget.spend(batch.num_rows)
                yield batch
    finally:
        running.end()


@contextmanager
def stopped_by(budget: Budget):
    """An interrupted query says why it stopped: its client, or its time limit. So does a model
    that a budget check stopped on one of DuckDB's threads, whose error DuckDB wraps as its own."""
    try:
        yield
    except QueryCancelled:
        raise budget.stopped() from None
    except (FlightLSTMError, duckdb.Error, OSError):
        if budget.should_stop():
            raise budget.stopped() from None
        raise


def _register(con: duckdb.DuckDBPyConnection, op: Operator, check_of: Callable[[int], Callable[[], None]]) -> None:
    """Both forms of `op`, each taking its caller's connection id last (plan/operators.py's
    `tag_connection`): DuckDB may call it on any of its threads, and the model checks that
    query's budget between its inference batches."""
    def with_model(*arrays):
        return op.fn(*arrays[:-1], model=constant(arrays[-1], "the model name"))

    def checked(fn):
        def call(*arrays):
            with checked_between_batches(check_of(constant(arrays[-1], "the connection id"))):
                return fn(*arrays[:-1])
        return call

    for name, params, fn in ((op.name, op.params, op.fn), (op.with_model_name, (*op.params, "VARCHAR"), with_model)):
        con.create_function(
            name, _arity(checked(fn), len(params) + 1), [*params, "UBIGINT"], op.returns,
            type="arrow", null_handling="special", side_effects=False,
        )


def _arity(fn: Callable, n: int) -> Callable:
    """DuckDB checks a UDF's signature against its SQL parameters; give it exactly `n`."""

    def call(*arrays):
        return fn(*arrays)

    call.__signature__ = inspect.Signature(
        [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(n)]
    )
    return call


class Watchdog:
    """Stops each running query whose budget says so: interrupts DuckDB, mid-operator too, and
    ends a query that waits on a silent client (`Running.stop`).

    One thread serves all of an engine's queries, so a query starts and joins no thread of its
    own (that cost a short query ~2 ms); the thread ends once nothing is watched for a tick."""

    TICK = 0.1  # seconds between looks: how late a cancel or time limit may act

    def __init__(self):
        self._watched: dict[int, Running] = {}
        self._lock = threading.Lock()
        self._running = False

    def watch(self, running: Running) -> Callable[[], None]:
        """Guard `running` until the returned call, which also interrupts whatever still runs on it."""
        with self._lock:
            self._watched[id(running)] = running
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="flight-lstm-watchdog", daemon=True).start()

        def unwatch() -> None:
            with self._lock:
                self._watched.pop(id(running), None)
            running.con.interrupt()

        return unwatch

    def _run(self) -> None:
        idle = False
        while True:
            time.sleep(self.TICK)
            with self._lock:
                if not self._watched:
                    if idle:
                        self._running = False
                        return
                    idle = True
                    continue
                idle = False
                due = [r for r in self._watched.values() if r.due()]
            for r in due:  # outside the lock (ending a query unwatches it); again each tick until it ends
                r.stop()


# DuckDB prefixes messages with their class ("Binder Error: ..."); UDF failures wrap the Python one.
_UDF_ERROR = re.compile(r"Python exception occurred while executing the UDF: (?:\w+Error: )?(.*)", re.S)


def _message(error: duckdb.Error) -> str:
    text = str(error).strip()
    found = _UDF_ERROR.search(text)
    if found:
        text = found.group(1).strip()
    return text.splitlines()[0] if text else type(error).__name__


# Mid-stream, DuckDB's errors arrive through the Arrow reader as OSError("<Kind> Error: ...").
_STREAM_KIND = re.compile(r"^([A-Za-z ]+?) Error: ")
_STREAM_ERRORS = {
    "INTERRUPT": QueryCancelled, "Permission": QueryRefused, "Out of Memory": ResourceExhausted,
    **dict.fromkeys(("Invalid Input", "Conversion", "Out of Range", "Binder", "Catalog", "Parser",
                     "Not implemented", "Type Mismatch", "Invalid type"), InvalidQuery),
}

_DUCKDB_ERRORS = (
    (duckdb.InterruptException, QueryCancelled),
    (duckdb.PermissionException, QueryRefused),
    (duckdb.OutOfMemoryException, ResourceExhausted),
    ((duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException, duckdb.InvalidInputException,
      duckdb.ConversionException, duckdb.OutOfRangeException, duckdb.TypeMismatchException,
      duckdb.NotImplementedException), InvalidQuery),
)


@contextmanager
def translated_errors(source: Source):
    """DuckDB's exceptions become ours, with a one-line message fit for a client; a failure of the
    source's own stream keeps the source's error. Anything else passes unchanged."""
    try:
        yield
    except FlightLSTMError:
        raise
    except (duckdb.Error, OSError) as e:
        ours = source.translate_error(e) or _ours(e)
        if ours is None:
            raise
        raise ours from None


def _ours(error: duckdb.Error | OSError) -> FlightLSTMError | None:
    kind = next((k for duck, k in _DUCKDB_ERRORS if isinstance(error, duck)), None)
    if kind is None and isinstance(error, OSError):
        found = _STREAM_KIND.match(str(error))
        kind = _STREAM_ERRORS.get(found.group(1)) if found else None
    return kind(_message(error)) if kind else None
