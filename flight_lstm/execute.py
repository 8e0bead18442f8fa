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
        self.db = _database(source, operators, {"memory_limit": memory_limit, "threads": threads})

    def close(self) -> None:
        """Let go of the source now (the server is stopping); queries still running keep theirs."""
        self.source.close(self.db)

    def schema(self, plan: Plan, params: list | None = None) -> pa.Schema:
        """The result schema, found without running any operator (LIMIT 0 plans but never calls).
        `params` fill the query's `?`/`$1` placeholders: DuckDB binds them, nothing is pasted."""
        con = self.connect(plan, schema_only=True)
        try:
            with translated_errors(self.source):
                return con.sql(_only_select(con, plan.sql), params=params).limit(0).to_arrow_table().schema
        finally:
            self.release(con, plan)

    def stream(
        self, plan: Plan, cancelled: Callable[[], bool] = lambda: False,
        extra_tables: dict[str, pa.Table] | None = None, params: list | None = None,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """Start the query; batches of at most `batch_rows` rows follow as the consumer pulls them.

        The query holds one of the server's slots (`Limits.max_queries`) until its cursor closes:
        when the iterator is exhausted or closed. A watchdog interrupts DuckDB mid-operator when
        `cancelled` turns true (the client went away) or the query's time runs out.
        `extra_tables` are readable by name, as the plan's `local_tables`.
        """
        con, leave = self.admit(plan, extra_tables)
        budget = Budget(self.limits, cancelled)
        unwatch = self.watchdog.watch(con, budget)

        def finish() -> None:
            unwatch()
            self.release(con, plan, leave)

        done = _Once(finish)
        try:
            # DuckDB runs a blocking query (GROUP BY, ORDER BY) to its end right here, so the
            # watchdog is already on guard.
            with stopped_by(budget), translated_errors(self.source):
                sql = _only_select(con, plan.sql)
                if plan.lift:  # names and types as the query wrote them; LIMIT 0 calls no operator
                    schema = con.sql(sql, params=params).limit(0).to_arrow_table().schema
                    sql = plan.lift.sql
                reader = con.sql(sql, params=params).to_arrow_reader(self.batch_rows)
        except BaseException:
            done()
            raise
        batches = _batches(reader, budget, self.source, done)
        # A stream dropped before its first batch never runs its `finally`: release it on collection.
        weakref.finalize(batches, done)
        if plan.lift:
            return schema, apply_lift(plan.lift, schema, batches, self.operators, budget)
        return reader.schema, batches

    def admit(self, plan: Plan | None, extra_tables: dict[str, pa.Table] | None = None
              ) -> tuple[duckdb.DuckDBPyConnection, Callable[[], None]]:
        """One of the server's query slots (waiting for it, or ResourceExhausted) and a cursor for
        the plan; give both back with `release(con, plan, leave)`."""
        leave = self.admission.enter()
        try:
            return self.connect(plan, extra_tables=extra_tables), leave
        except BaseException:
            leave()
            raise

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


def _database(source: Source, operators, settings: dict) -> duckdb.DuckDBPyConnection:
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
        _register(db, op)
    paths = source.allowed_paths()
    if paths:
        db.execute("SET allowed_paths = ?", [paths])
    db.execute("SET enable_external_access = false")
    db.execute("SET lock_configuration = true")
    return db


def _only_select(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """DuckDB's own parse must also see exactly one SELECT: a third check, independent of sqlglot."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error:
        return sql  # let the query itself report the syntax error
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise QueryRefused("queries are read-only: only one SELECT statement is allowed")
    return sql


class _Once:
    """A cleanup that runs once, whichever comes first: the stream's end or its collection."""

    def __init__(self, cleanup: Callable[[], None]):
        self.cleanup, self.lock, self.done = cleanup, threading.Lock(), False

    def __call__(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        self.cleanup()


def _batches(reader, budget: Budget, source: Source, release: _Once) -> Iterator[pa.RecordBatch]:
    try:
        with stopped_by(budget), translated_errors(source):
            for batch in reader:
                budget.spend(batch.num_rows)
                yield batch
    finally:
        reader.close()  # DuckDB's result goes now, not when a collector finds it
        release()


@contextmanager
def stopped_by(budget: Budget):
    """An interrupted query says why it stopped: its client, or its time limit."""
    try:
        yield
    except QueryCancelled:
        raise budget.stopped() from None


def _register(con: duckdb.DuckDBPyConnection, op: Operator) -> None:
    def with_model(*arrays):
        return op.fn(*arrays[:-1], model=constant(arrays[-1], "the model name"))

    for name, params, fn in ((op.name, op.params, op.fn), (op.with_model_name, (*op.params, "VARCHAR"), with_model)):
        con.create_function(
            name, _arity(fn, len(params)), list(params), op.returns,
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
    """Interrupts DuckDB, mid-operator too, for each running query whose budget says stop.

    One thread serves all of an engine's queries, so a query starts and joins no thread of its
    own (that cost a short query ~2 ms); the thread ends once nothing is watched for a tick."""

    TICK = 0.1  # seconds between looks: how late a cancel or time limit may act

    def __init__(self):
        self._watched: dict[int, tuple[duckdb.DuckDBPyConnection, Budget]] = {}
        self._lock = threading.Lock()
        self._running = False

    def watch(self, con: duckdb.DuckDBPyConnection, budget: Budget) -> Callable[[], None]:
        """Guard `con` until the returned call, which also interrupts whatever still runs on it."""
        with self._lock:
            self._watched[id(con)] = (con, budget)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="flight-lstm-watchdog", daemon=True).start()

        def unwatch() -> None:
            with self._lock:
                self._watched.pop(id(con), None)
            con.interrupt()

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
                for key, (con, budget) in list(self._watched.items()):
                    if budget.should_stop():
                        con.interrupt()
                        del self._watched[key]


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
