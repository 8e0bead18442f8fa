"""The engine's DuckDB: one in-memory database per engine, locked down, with the operators
registered; and the one door through which any SQL reaches it (`checked_sql`).

One database, not one per query: creating a DuckDB database costs ~35 ms of CPU, a cursor almost
nothing, so short queries stay short."""
from __future__ import annotations

import inspect
from typing import Callable

import duckdb

from flight_lstm import heap, threads
from flight_lstm.engine.errors import OperatorMemoryError, out_of_memory, out_of_memory_message
from flight_lstm.errors import QueryRefused
from flight_lstm.models.checks import checked_between_batches
from flight_lstm.plan.size import PIVOT_LIMIT
from flight_lstm.sources import Source
from udfs.base import Operator, constant


def open_database(source: Source, operators, check_of, settings: dict) -> duckdb.DuckDBPyConnection:
    """The engine's locked-down database. The second lock behind the planner: even SQL the planner
    let through cannot read or write files (but the source's own), install or load extensions,
    scan Python variables, or change a setting. Without a `threads` setting, DuckDB takes the
    process's share (flight_lstm/threads.py), not one thread per core of the machine."""
    settings = {"threads": threads.duckdb_threads(), **{k: v for k, v in settings.items() if v is not None}}
    db = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "python_enable_replacements": False,
        "pivot_limit": PIVOT_LIMIT,  # values a PIVOT reads from the data at most (plan/size.py)
        **settings,
    })
    for op in operators:
        _register(db, op, check_of)
    paths = source.allowed_paths()
    if paths:
        db.execute("SET allowed_paths = ?", [paths])
    db.execute("SET enable_external_access = false")
    db.execute("SET lock_configuration = true")
    return db


def lost(error: BaseException) -> bool:
    """Whether `error` says DuckDB invalidated the database. It does so after an INTERNAL error (a
    bug of its own, such as a cast that failed where it was declared unable to): every later
    statement of every cursor then fails with a FatalException, and the database "must be
    restarted". One database serves all of a server's clients, so the engine opens a new one."""
    return isinstance(error, duckdb.FatalException)


def alive(db: duckdb.DuckDBPyConnection) -> bool:
    """One statement on a fresh cursor: False if DuckDB invalidated the database."""
    try:
        with db.cursor() as con:
            con.execute("SELECT 1")
    except duckdb.Error as e:
        if lost(e):
            return False
        raise
    return True


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


def _register(con: duckdb.DuckDBPyConnection, op: Operator, check_of: Callable[[int], Callable[[], None]]) -> None:
    """Both forms of `op`, each taking its caller's connection id last (plan/operators.py's
    `tag_connection`): DuckDB may call it on any of its threads, and the model checks that
    query's budget between its inference batches. An operator out of memory leaves as an
    OperatorMemoryError with the fixed message (engine/errors.py), its arrays already let go."""
    def with_model(*arrays):
        return op.fn(*arrays[:-1], model=constant(arrays[-1], "the model name"))

    def checked(fn):
        def call(*arrays):
            with checked_between_batches(check_of(constant(arrays[-1], "the connection id"))), heap.model_call():
                try:
                    return fn(*arrays[:-1])
                except Exception as e:
                    if not out_of_memory(e):
                        raise
            raise OperatorMemoryError(out_of_memory_message(op.name))  # outside `except`: no traceback kept
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
