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
rule (duckdb_check.py), so the check is made on exactly the text the engine runs; and the
placeholders DuckDB reads in it must be exactly the query's as parsed. Values are bound by number
(parse.py numbers each `?`), since sqlglot's writer moves, repeats and drops arguments
(`position(? IN ?)` is written `STRPOS(..)`, arguments swapped; regexp_replace's fourth is dropped
unless a literal): a placeholder dropped or written anew would shift what the values mean.

The writer's work is bounded too (`Budget`): some functions are written with their arguments
repeated (to_boolean's five times, months_between's four), so nesting them multiplies the text
at every level: 88 bytes of to_boolean six deep wrote 1 MB in 12 s, seven deep 1.7 GB. No time
limit or cancel reaches planning, so writing stops once it has written more nodes or characters
than a small multiple of the tree's own (with a floor that the largest plans allowed, table
functions expanded, stay well within), for the text and for its round trip alike.
"""
from __future__ import annotations

import re
from functools import cache

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError

from flight_lstm.errors import InvalidQuery, QueryRefused
from flight_lstm.plan.duckdb_check import check_with_duckdb, placeholder_names

PLAIN_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PLACEHOLDER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")  # $name or $1

# What writing a tree may cost, for its text and again for the text's round trip: nodes written
# (a node written twice counts twice) and characters written (each node's own text, each time it
# is written), each at most WRITE_FACTOR times the tree's own and never less than the floors. The
# largest plans allowed (8 forecast_tables, 4 anomaly_events over 64 columns) write about 19,000
# nodes and 112 kB, fewer than their trees hold; to_boolean six deep writes 113,000 nodes.
WRITE_FACTOR = 4
MIN_WRITTEN_NODES = 10_000
MIN_WRITTEN_CHARS = 1_000_000


def to_sql(tree: exp.Expression, dialect: str = "duckdb", placeholders: frozenset[str] | None = None) -> str:
    """`placeholders`: those of the query as parsed (`placeholders_of`), which the text must hold
    exactly; by default, the tree's own."""
    for node in tree.walk():
        raw = _raw_text(node)
        if raw is not None and not (PLACEHOLDER if isinstance(node, exp.Placeholder) else PLAIN_WORD).fullmatch(raw):
            raise QueryRefused(f"{raw[:40]!r} cannot stand where SQL expects a plain word "
                               f"({node.key.upper()}); write a keyword, type or function name there")
    own = placeholders_of(tree)
    placeholders = own if placeholders is None else placeholders
    limit = Budget.of(tree)
    try:
        sql = _write(tree, dialect, limit.fresh())
        again = _parsed(sql, dialect)
        same = len(again) == 1 and _write(again[0], dialect, limit.fresh()) == sql
    except RecursionError:
        raise InvalidQuery("the query nests expressions too deeply") from None
    if not same:
        raise QueryRefused("the query cannot be written back as the same single statement; "
                           "simplify the expression it names")
    if dialect == "duckdb":
        check_with_duckdb(sql)
        written = _written_placeholders(sql) if own or "?" in sql or "$" in sql else frozenset()
        if written != placeholders:
            raise QueryRefused(_moved(placeholders, written))
    return sql


def _parsed(sql: str, dialect: str) -> list[exp.Expression]:
    try:
        return [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except (ParseError, TokenError):
        return []


def placeholders_of(tree: exp.Expression) -> frozenset[str]:
    """The names of the tree's placeholders ("1" for `$1`, "name" for `$name`), as DuckDB names
    them; a placeholder with no name (`?`) is bound by where it is written, so it may not reach the
    writer (parse.py numbers every one)."""
    names = set()
    for node in tree.find_all(exp.Placeholder):
        if node.this is None:
            raise QueryRefused("a `?` placeholder reached the SQL writer unnumbered; its value could be "
                               "bound to another placeholder, so the query is refused")
        names.add(_bound_name(node.name))
    return frozenset(names)


def _written_placeholders(sql: str) -> frozenset[str]:
    """The placeholders DuckDB reads in `sql`, which it binds the values to."""
    return frozenset(_bound_name(name) for name in placeholder_names(sql))


def _bound_name(name: str) -> str:
    """A placeholder's name as DuckDB binds it: `$01` is `$1`, `$Name` is `$name`."""
    return str(int(name)) if name.isascii() and name.isdigit() else name.lower()


def _moved(placeholders: frozenset[str], written: frozenset[str]) -> str:
    lost, new = sorted(placeholders - written), sorted(written - placeholders)
    words = [f"drops {', '.join('$' + n for n in lost)}" if lost else "",
             f"adds {', '.join('$' + n for n in new)}" if new else ""]
    return (f"the query cannot be written with its placeholders kept: the SQL it becomes "
            f"{' and '.join(w for w in words if w)}, so values would bind to the wrong places; "
            "write the expression holding them differently (e.g. a plain function call)")


class Budget:
    """What writing one tree may still cost, in nodes and characters written."""

    def __init__(self, nodes: int, chars: int):
        self.nodes, self.chars = nodes, chars
        self._limits = (nodes, chars)
        self._children: list[int] = []  # per node being written: characters its children wrote

    @classmethod
    def of(cls, tree: exp.Expression) -> "Budget":
        nodes = chars = 0
        for node in tree.walk():
            nodes += 1
            chars += 1 + sum(len(v) for v in node.args.values() if isinstance(v, str))
        return cls(max(MIN_WRITTEN_NODES, WRITE_FACTOR * nodes), max(MIN_WRITTEN_CHARS, WRITE_FACTOR * chars))

    def fresh(self) -> "Budget":
        return Budget(*self._limits)

    def enter(self) -> None:
        self.nodes -= 1
        if self.nodes < 0:
            raise self._exceeded(f"{self._limits[0]:,} SQL nodes")
        self._children.append(0)

    def leave(self, text: str | None) -> None:
        children = self._children.pop()
        if text is None:
            return
        if self._children:
            self._children[-1] += len(text)
        self.chars -= max(len(text) - children, 0)
        if self.chars < 0:
            raise self._exceeded(f"{self._limits[1]:,} characters")

    def _exceeded(self, what: str) -> InvalidQuery:
        return InvalidQuery(f"the query is written out as more than {what}: some functions (to_boolean, "
                            "months_between, initcap, ...) are written with their arguments repeated, so "
                            "nesting them multiplies the SQL; nest fewer or split the query")


def _write(tree: exp.Expression, dialect: str, budget: Budget) -> str:
    d = Dialect.get_or_raise(dialect)
    generator = _budgeted(d.generator_class)(dialect=d, comments=False)
    generator.budget = budget
    return generator.generate(tree, copy=True)


@cache
def _budgeted(generator_class: type) -> type:
    """The dialect's SQL writer, counting every node it writes against its `budget`."""

    class Budgeted(generator_class):
        budget: Budget

        def sql(self, expression, key=None, comment=True):
            # Generator.sql itself, counting: a frame more per node would lower how deep a
            # query may nest before Python's recursion limit.
            if not expression:
                return ""
            if isinstance(expression, str):
                return expression
            if key:
                value = expression.args.get(key)
                return self.sql(value) if value else ""
            self.budget.enter()
            text = None
            try:
                handler = self._dispatch.get(expression.__class__)
                if handler:
                    text = handler(self, expression)
                elif isinstance(expression, exp.Func):
                    text = self.function_fallback_sql(expression)
                elif isinstance(expression, exp.Property):
                    text = self.property_sql(expression)
                else:
                    raise ValueError(f"Unsupported expression type {expression.__class__.__name__}")
                if self.comments and comment:
                    text = self.maybe_comment(text, expression)
            finally:
                self.budget.leave(text)
            return text

    Budgeted.__name__ = Budgeted.__qualname__ = f"Budgeted{generator_class.__name__}"
    return Budgeted


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
