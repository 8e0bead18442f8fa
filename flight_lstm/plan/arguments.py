"""The table functions in FROM (`forecast_table(...)`, `anomaly_table(...)`): reading their
arguments, and the tree their expansion becomes.

Arguments are one table name, then named parameters, each a literal. Only literals are taken, and
each comes back as SQL of our own making: a column or table name quoted as an identifier, a number
as its literal text. So no user text reaches the expansion outside a quoted identifier or literal,
whatever the caller writes.

An expansion is written in DuckDB's SQL (epoch_us, list_resize, error, ...), which a source that
runs SQL itself (Dremio) does not speak: each function call in it is marked LOCAL_ONLY, and the
pushdown (plan/pushdown.py) sends such a source only the columns and plain filters it reads.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from flight_lstm.errors import InvalidQuery, first_line

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
           "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "BOOLEAN")  # DuckDB's number types (and DECIMAL(p, s))
LOCAL_ONLY = "local_only"  # meta of a function call that runs in the local DuckDB, never in a source
_PART = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
# table, schema.table, catalog.schema.table, or a source's longer path (Dremio: space.folder.table)
TABLE_NAME = re.compile(rf"\s*{_PART}(?:\s*\.\s*{_PART})*\s*")


def expansion(sql: str) -> exp.Query:
    """An expansion's SQL as a tree, its function calls marked LOCAL_ONLY. A table named by a
    keyword ('values') unquoted breaks it: the caller's error, to quote ('"values"')."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except (ParseError, TokenError) as e:
        raise InvalidQuery(f"a table function's arguments do not make valid SQL (quote a table named by a "
                           f"keyword, like '\"values\"'): {first_line(e)}") from None
    for call in tree.find_all(exp.Func):
        call.meta[LOCAL_ONLY] = True
    return tree


@dataclass(frozen=True)
class TableCall:
    function: str  # its name, for messages
    table: str  # the table it reads, as SQL
    named: dict[str, exp.Expression]

    @classmethod
    def of(cls, call: exp.Anonymous, parameters: tuple[str, ...], usage: str) -> TableCall:
        """The call's table and named parameters; InvalidQuery with `usage` for anything else."""
        function = call.name.lower()
        positional = [a for a in call.expressions if not isinstance(a, exp.Kwarg)]
        named = {a.this.name.lower(): a.expression for a in call.expressions if isinstance(a, exp.Kwarg)}
        unknown = set(named) - set(parameters)
        if len(positional) != 1 or unknown:
            raise InvalidQuery(f"{function}({usage}) takes one table name and named parameters"
                               + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
        self = cls(function, "", named)
        text = self._string(positional[0], "the table name")
        # Only a name: any other table expression (a function, `unnest([...])`) would be SQL from
        # a string, pasted into the expansion, with table functions of its own to expand.
        if not TABLE_NAME.fullmatch(text):
            raise InvalidQuery(f"{function}(): the table name must name a table or view, like 'sales' or "
                               f"'lake.main.sales', got {text[:60]!r}")
        table = exp.to_table(text, dialect="duckdb")
        return cls(function, table.sql("duckdb"), named)

    def __contains__(self, parameter: str) -> bool:
        return parameter in self.named

    def require(self, *parameters: str) -> None:
        for parameter in parameters:
            if parameter not in self.named:
                raise InvalidQuery(f"{self.function}() needs {parameter} => ...")

    def string(self, parameter: str) -> str:
        """The parameter's text (not SQL: quote it before it goes into any)."""
        return self._string(self.named[parameter], parameter)

    def column(self, parameter: str) -> str:
        """The parameter as a quoted column name."""
        return quote_column(self.string(parameter))

    def number_column(self, column: str) -> str:
        """SQL for a quoted column's value as DOUBLE, stopping the query with an error naming the
        column when its type is not a number (a string of digits too: text is not a measurement)."""
        return (f"CASE WHEN typeof({column}) IN ({', '.join(repr(t) for t in NUMERIC)}) OR typeof({column}) "
                f"LIKE 'DECIMAL%' THEN CAST({column} AS DOUBLE) ELSE error('{self.function}: value column ' || "
                f"{exp.Literal.string(column).sql('duckdb')} || ' is ' || typeof({column}) || ', not a number') END")

    def number(self, parameter: str) -> str:
        """The parameter's numeric literal, as SQL."""
        node, sign = self.named[parameter], ""
        if isinstance(node, exp.Neg):
            node, sign = node.this, "-"
        if not (isinstance(node, exp.Literal) and not node.is_string):
            raise InvalidQuery(f"{self.function}(): {parameter} must be a number")
        return sign + node.this

    def error(self, message: str) -> InvalidQuery:
        return InvalidQuery(f"{self.function}(): {message}")

    def _string(self, node: exp.Expression, what: str) -> str:
        if not (isinstance(node, exp.Literal) and node.is_string):
            raise InvalidQuery(f"{self.function}(): {what} must be a string literal")
        return node.this


def quote_column(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql("duckdb")
