"""Write an approved tree as SQL that means exactly that tree: the last step of every plan.

sqlglot writes a few parts of a tree as raw text: EXTRACT's part and a date unit (`Var`), an
unknown type's name, a placeholder's name, a function's name. A quoted identifier in one of those
places once became raw SQL (a second statement, or a call the planner never saw). So, for any
dialect:
1. those raw parts must be plain words;
2. comments are dropped (they carry user text and nothing else);
3. the text must parse back as one statement that writes the same text again: raw text that
   slipped through reads back as other nodes, and those write differently (case, spacing);
and for the engine's DuckDB, DuckDB's own parser must read it as one SELECT within the read-only
rule (duckdb_check.py), so the check is made on exactly the text the engine runs.
"""
from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from flight_lstm.errors import QueryRefused
from flight_lstm.plan.duckdb_check import check_with_duckdb

PLAIN_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLACEHOLDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")  # $name or $1


def to_sql(tree: exp.Expression, dialect: str = "duckdb") -> str:
    for node in tree.walk():
        raw = _raw_text(node)
        if raw is not None and not (PLACEHOLDER if isinstance(node, exp.Placeholder) else PLAIN_WORD).fullmatch(raw):
            raise QueryRefused(f"{raw[:40]!r} cannot stand where SQL expects a plain word "
                               f"({node.key.upper()}); write a keyword, type or function name there")
    sql = tree.sql(dialect=dialect, comments=False)
    try:
        again = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except (ParseError, TokenError, RecursionError):
        again = []
    if len(again) != 1 or again[0].sql(dialect=dialect, comments=False) != sql:
        raise QueryRefused("the query cannot be written back as the same single statement; "
                           "simplify the expression it names")
    if dialect == "duckdb":
        check_with_duckdb(sql)
    return sql


def _raw_text(node: exp.Expression) -> str | None:
    """The text sqlglot writes unquoted for this node, if it writes any."""
    if isinstance(node, exp.Var):
        return node.name
    if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.USERDEFINED:
        return str(node.args.get("kind") or "")
    if isinstance(node, exp.Placeholder) and node.this is not None:
        return node.name
    if isinstance(node, exp.Anonymous):
        return node.name
    return None
