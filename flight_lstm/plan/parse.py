"""Parse user SQL into exactly one statement tree, with a clear error otherwise."""
from __future__ import annotations

import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from flight_lstm.errors import InvalidQuery, QueryRefused, first_line
from flight_lstm.plan.duckdb_check import syntax_error

MAX_SQL_BYTES = 256 * 1024  # a dense 0.6 MB IN list took 11 s to plan (sqlglot)

# sqlglot logs a warning when it falls back to a raw Command; we refuse those with our own error.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


def parse_one_query(sql: str) -> exp.Expression:
    if not sql or not sql.strip():
        raise InvalidQuery("empty query: send one SELECT statement")
    if len(sql) > MAX_SQL_BYTES or len(sql.encode("utf-8", "surrogatepass")) > MAX_SQL_BYTES:
        raise InvalidQuery(f"query text is over {MAX_SQL_BYTES} bytes")
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError) as e:
        raise InvalidQuery(_syntax_error(sql, e)) from None
    except RecursionError:  # sqlglot's parser recurses ~16 frames per bracket: ~60 nested brackets
        raise InvalidQuery("syntax error: the query nests brackets or expressions too deeply") from None
    if len(statements) != 1:
        raise QueryRefused(f"send exactly one statement, got {len(statements)}")
    # sqlglot lets some garbage through as nodes missing a required part (`SELECT lateral ..`),
    # which later steps would trip over: refuse them here, as the syntax errors they are.
    for node in statements[0].walk():
        missing = node.error_messages()
        if missing:
            raise InvalidQuery(f"syntax error: {missing[0].split(' for <')[0]} in {node.key.upper()}")
    return statements[0]


def _syntax_error(sql: str, error: Exception) -> str:
    """DuckDB's words where it has them (`syntax error at or near "SELEC"`: the engine's dialect,
    the message users know), with sqlglot's line and column."""
    duckdb_says = syntax_error(sql)
    errors = getattr(error, "errors", None)
    if duckdb_says and errors:
        return f"{duckdb_says} (line {errors[0].get('line')}, column {errors[0].get('col')})"
    return duckdb_says or f"syntax error: {_first_line(error)}"


def _first_line(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if errors:
        e = errors[0]
        return f"{e.get('description')} at line {e.get('line')}, column {e.get('col')}"
    return first_line(error)
