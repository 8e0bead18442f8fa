"""SQL in, a safe DuckDB query out: parse, expand forecast_table, check read-only, inline views,
bind operators, push work down to a source that runs SQL, lift operator calls out, and write SQL
that means exactly the approved tree (emit.py), checked by DuckDB's own parser.

Each step is one module over the shared sqlglot tree (the sqlglot optimizer pattern).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from sqlglot import exp
from sqlglot.errors import OptimizeError

from flight_lstm.errors import InvalidQuery
from flight_lstm.plan.emit import to_sql
from flight_lstm.plan.forecast_table import expand_forecast_tables
from flight_lstm.plan.lift import Lift, lift_operators
from flight_lstm.plan.operators import bind_operators, operators_called, tag_connection
from flight_lstm.plan.parse import parse_one_query
from flight_lstm.plan.pushdown import push_down
from flight_lstm.plan.read_only import check_read_only
from flight_lstm.plan.views import inline_views, source_tables


@dataclass(frozen=True)
class Plan:
    sql: str  # what the execution engine runs (DuckDB dialect)
    tables: tuple[str, ...]  # source tables the query reads
    operators: frozenset[str]  # operator names it calls
    # For a pushdown source: (local name, SQL in the source's dialect) for each piece it runs.
    scans: tuple[tuple[str, str], ...] = ()
    # Operator calls the engine applies to whole Arrow batches itself (plan/lift.py), if any.
    lift: Lift | None = None


@dataclass
class Catalog:
    """What planning needs to know about the world: operators, models, published views."""

    operators: Iterable = ()
    check_model: Callable[[str, str], None] = lambda kind, ref: None
    views: dict[str, exp.Query] = field(default_factory=dict)
    # A source that runs SQL itself: its sqlglot dialect, and how to learn a table's columns.
    pushdown_dialect: str | None = None
    columns_of: Callable[[str], list[str]] | None = None

    def add_view(self, name: str, sql: str) -> None:
        """Publish `sql` as a named, queryable view; it may use operators and earlier views."""
        self.views[name.lower()] = self._prepare(sql)

    def plan(self, sql: str, local_tables: tuple[str, ...] = ()) -> Plan:
        """`local_tables` names tables the caller registers in the query's own connection (e.g. an
        enrichment run's already-written keys): they are neither source tables nor pushed down."""
        return self._finish(self._prepare(sql), {t.lower() for t in local_tables})

    def _prepare(self, sql: str) -> exp.Query:
        tree = expand_forecast_tables(parse_one_query(sql))
        check_read_only(tree)
        tree = inline_views(tree, self.views)
        return bind_operators(tree, self.operators, self.check_model)

    def _finish(self, tree: exp.Query, local_tables: set[str]) -> Plan:
        called = operators_called(tree, self.operators)
        tables, scans = tuple(t for t in source_tables(tree) if t.lower() not in local_tables), []
        if self.pushdown_dialect:
            internal = {name for op in self.operators for name in (op.name, op.with_model_name)}
            try:
                tree, scans = push_down(tree.copy(), self.pushdown_dialect, internal, self.columns_of, local_tables)
            except OptimizeError as e:  # sqlglot finds no scopes in it: a query that cannot run anywhere
                raise InvalidQuery(f"cannot plan this query: {str(e).splitlines()[0]}") from None
        tree = tag_connection(tree, self.operators)
        return Plan(to_sql(tree), tables, called, tuple(scans), lift_operators(tree, self.operators))
