"""Parse user SQL into exactly one statement tree, with a clear error otherwise. DuckDB's PIVOT and
UNPIVOT statements become the queries they stand for (`SELECT * FROM (PIVOT ...)`).

Placeholders are bound by number. DuckDB numbers each anonymous `?` by where it stands in the
text it runs, but the planner runs the text sqlglot writes from the tree, and sqlglot's writer
moves, repeats and drops arguments (`position(? IN ?)` is written `STRPOS(?, ?)`, arguments
swapped; `OFFSET ? LIMIT ?` as `LIMIT ? OFFSET ?`; FROM-first SQL SELECT-first). So each `?` is
numbered here, `$1` .. `$n` in the order the user wrote them (as DuckDB numbers them), and is
written as that number wherever the writer puts it; emit.py checks the written text holds
exactly the tree's placeholders. `?` and `$1`/`$name` in one query are refused: DuckDB numbers a
`?` after the `$n` written before it, which no one means. For the same reason (the writer's
spelling is not the user's), each column without an alias notes here the name DuckDB gives the
text (output_names.py).
"""
from __future__ import annotations

import logging
import re

import duckdb
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from flight_lstm.errors import InvalidQuery, QueryRefused, first_line
from flight_lstm.plan.copies import check_copies
from flight_lstm.plan.duckdb_check import syntax_error
from flight_lstm.plan.output_names import note_names

MAX_SQL_BYTES = 256 * 1024  # a dense 0.6 MB IN list took 11 s to plan (sqlglot)
# sqlglot tokenizes and parses about 100,000 tokens a second here, before the planned tree's
# bound (plan/size.py, 20,000 nodes; a node takes 1-3 tokens) can refuse anything: 256 KiB of
# one-character tokens held a query slot for 4 s. DuckDB's tokenizer counts them first (0.1 s).
MAX_TOKENS = 80_000

# sqlglot logs a warning when it falls back to a raw Command; we refuse those with our own error.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


class _Tokenizer(DuckDB.Tokenizer):
    # sqlglot reads `?::` as one token in every dialect (Databricks' `x ?:: INT`, a try-cast);
    # DuckDB has no such operator, and `?::DATE` is a placeholder cast to DATE.
    KEYWORDS = {word: kind for word, kind in DuckDB.Tokenizer.KEYWORDS.items() if word != "?::"}


class _Parser(DuckDB.Parser):
    """DuckDB's parser, with each `?` read as the numbered placeholder `$n`: `numbers` gives n by
    where the `?` stands in the text."""

    numbers: dict[int, str] = {}  # a `?` not in it stays unnumbered, and emit.py refuses it

    PLACEHOLDER_PARSERS = {
        **DuckDB.Parser.PLACEHOLDER_PARSERS,
        TokenType.PLACEHOLDER: lambda self: self.expression(exp.Placeholder(this=self.numbers.get(self._prev.start))),
    }


_DUCKDB = DuckDB()


def parse_one_query(sql: str) -> exp.Expression:
    if not sql or not sql.strip():
        raise InvalidQuery("empty query: send one SELECT statement")
    if len(sql) > MAX_SQL_BYTES or len(sql.encode("utf-8", "surrogatepass")) > MAX_SQL_BYTES:
        raise InvalidQuery(f"query text is over {MAX_SQL_BYTES} bytes")
    _check_tokens(sql)
    try:
        tokens = _Tokenizer(dialect=_DUCKDB).tokenize(sql)
        anonymous = [t for t in tokens if t.token_type == TokenType.PLACEHOLDER]
        parser = _Parser(dialect=_DUCKDB)
        parser.numbers = {t.start: str(n) for n, t in enumerate(anonymous, start=1)}
        # A comment after the last `;` (`SELECT 1; -- done`, as editors save it) is no statement:
        # sqlglot keeps it as a Semicolon node, which holds comments and nothing else.
        statements = [s for s in parser.parse(tokens, sql) if s is not None and not isinstance(s, exp.Semicolon)]
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
            raise InvalidQuery(f"syntax error: {_plain(missing[0].split(' for <')[0])} in {node.key.upper()}")
    _check_placeholders(sql, statements[0], anonymous, tokens)
    tree = statements[0]
    check_copies(tree)  # before DuckDB's parse of it (output_names.py) makes the copies
    for pivot in tree.find_all(exp.Pivot):  # DuckDB's own form (`PIVOT t ON a IN (...)`): no `fields`
        listed = all(isinstance(e, exp.In) for e in pivot.expressions)
        if not pivot.unpivot and not pivot.args.get("fields") and not listed:
            raise InvalidQuery("a PIVOT here lists the values it makes columns of (`ON store IN ('a', 'b')`): "
                               "DuckDB runs one that reads them from the data as several statements")
    if isinstance(tree, exp.Pivot):  # DuckDB's PIVOT and UNPIVOT statements are queries
        tree = exp.select("*").from_(exp.Subquery(this=tree))
    return note_names(tree, sql)


def _check_tokens(sql: str) -> None:
    try:
        count = len(duckdb.tokenize(sql))
    except Exception:  # noqa: BLE001 - DuckDB could not tokenize it: sqlglot's parse reports why
        return
    if count > MAX_TOKENS:
        raise InvalidQuery(f"the query holds {count:,} tokens, more than {MAX_TOKENS:,}; split it into smaller queries")


def _check_placeholders(sql: str, tree: exp.Expression, anonymous: list[Token], tokens: list[Token]) -> None:
    """Every `?` is in the tree, numbered; and not mixed with `$1`/`$name`."""
    if not anonymous:
        return
    if any(t.token_type == TokenType.PARAMETER and t.text == "$" for t in tokens):
        raise InvalidQuery("use one kind of placeholder in a query: `?` (numbered in the order written) or "
                           "`$1`, `$2`, ... (or `$name`), not both")
    numbered = {p.name for p in tree.find_all(exp.Placeholder)}
    for n, token in enumerate(anonymous, start=1):
        if str(n) not in numbered:  # read as something else (`x ? 'key'`), or dropped by sqlglot
            raise InvalidQuery(syntax_error(sql) or f"syntax error: the `?` at line {token.line}, column "
                               f"{token.col} is not read as a placeholder; write `$1`, `$2`, ... instead")


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
        return f"{_plain(str(e.get('description')))} at line {e.get('line')}, column {e.get('col')}"
    return _plain(first_line(error))


_CLASS = re.compile(r"(?:\s+for)?\s+<class '(?:[\w.]+\.)?(\w+)'>")


def _plain(message: str) -> str:
    """sqlglot's words without its internals: `missing for <class 'sqlglot.expressions....DateDiff'>`
    names the node as SQL does (`missing in DATEDIFF`)."""
    return _CLASS.sub(lambda m: f" in {m.group(1).upper()}", message)
