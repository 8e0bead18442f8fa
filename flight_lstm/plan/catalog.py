"""What a plan is, and the catalog that makes one: the query steps composed as data.

    QUERY:    parse, count the relations read, expand the table functions (forecast_table,
              forecast_backtest, anomaly_table; at most 8), check read-only, inline views, check
              the size of the tree, check series are ordered, bind operators
    EXCHANGE: parse, count the relations read, check read-only, check row-wise, check series are
              ordered, bind operators, then check the size of the tree with the input's types known
    then:     push work down to a source that runs SQL, name columns as DuckDB names the text
              the user wrote, tag operator calls with their connection, lift operator calls
              out, and write SQL (emit.py, checked by DuckDB)

Each step is one module's function over the shared sqlglot tree (the sqlglot optimizer pattern);
a step takes the tree and, by name, what it needs of the catalog, and returns the tree.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cache
from typing import Callable, Iterable

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import OptimizeError

from flight_lstm.errors import InvalidQuery, first_line
from flight_lstm.plan.anomaly_table import expand_anomaly_tables
from flight_lstm.plan.emit import placeholders_of, to_sql
from flight_lstm.plan.forecast_backtest import expand_forecast_backtests
from flight_lstm.plan.forecast_table import expand_forecast_tables
from flight_lstm.plan.lift import Lift, lift_operators
from flight_lstm.plan.operators import bind_operators, models_called, operator_names, operators_called, tag_connection
from flight_lstm.plan.ordered import check_ordered_series
from flight_lstm.plan.output_names import name_columns
from flight_lstm.plan.parse import parse_one_query
from flight_lstm.plan.pushdown import push_down
from flight_lstm.plan.read_only import check_read_only
from flight_lstm.plan.row_wise import check_row_wise
from flight_lstm.plan.size import (TableTypes, check_exchange_size, check_plan_size, check_relations,
                                   check_table_functions)
from flight_lstm.plan.views import inline_views, source_tables

QUERY = (check_table_functions, check_relations, expand_forecast_tables, expand_forecast_backtests,
         expand_anomaly_tables, check_read_only, inline_views, check_plan_size, check_ordered_series, bind_operators)
EXCHANGE = (check_relations, check_read_only, check_row_wise, check_ordered_series, bind_operators)


@dataclass(frozen=True)
class Plan:
    sql: str  # what the execution engine runs (DuckDB dialect)
    tables: tuple[str, ...]  # source tables the query reads
    operators: frozenset[str]  # operator names it calls
    # For a pushdown source: (local name, SQL in the source's dialect) for each piece it runs.
    scans: tuple[tuple[str, str], ...] = ()
    # Operator calls the engine applies to whole Arrow batches itself (plan/lift.py), if any.
    lift: Lift | None = None
    models: frozenset[str] = frozenset()  # 'name@version' of each model its calls use, as of planning
    parameters: bool = False  # holds `?`/`$1`/`$name` placeholders, bound at run time


@dataclass
class Catalog:
    """What planning needs to know about the world: operators, models, published views."""

    operators: Iterable = ()
    # A model reference (None: the kind's default) as 'name@version'; InvalidQuery if unknown.
    resolve_model: Callable[[str, str | None], str | None] = lambda kind, ref: ref
    views: dict[str, exp.Query] = field(default_factory=dict)
    # A source that runs SQL itself: its sqlglot dialect, and how to learn a table's columns.
    pushdown_dialect: str | None = None
    columns_of: Callable[[str], list[str]] | None = None
    # The types of the source tables these names' parts name, where the source can tell (size.py).
    table_types: TableTypes | None = None

    def add_view(self, name: str, sql: str) -> None:
        """Publish `sql` as a named, queryable view; it may use operators and earlier views. It is
        kept unbound (a query naming it binds it whole) and checked whole now."""
        tree = parse_one_query(sql)
        if tree.find(exp.Placeholder) is not None:  # numbered apart from a query's own: both would be $1
            raise InvalidQuery(f"view {name!r} holds a placeholder ($1, ?, $name); a published view "
                               "takes no bound values: write them into its SQL")
        tree = self._run(QUERY[:-1], tree)
        self._run(QUERY[-1:], tree.copy())
        self.views[name.lower()] = tree

    def plan(self, query: str | exp.Query, local_tables: tuple[str, ...] = ()) -> Plan:
        """Plan SQL text, or a tree parsed once by the caller (which keeps its own copy).
        `local_tables` names tables the caller registers in the query's own connection (e.g. an
        enrichment run's already-written keys): they are neither source tables nor pushed down."""
        tree = parse_one_query(query) if isinstance(query, str) else query.copy()
        placeholders = placeholders_of(tree)  # as parsed: the SQL written must hold exactly these
        return self._finish(self.prepare(tree), {t.lower() for t in local_tables}, placeholders)

    def plan_exchange(self, sql: str, schema: pa.Schema) -> Plan:
        """A query over a client's own batches (DoExchange) of `schema`: row by row, nothing pushed
        down, its size bounded knowing the input's types."""
        tree = parse_one_query(sql)
        placeholders = placeholders_of(tree)
        tree = check_exchange_size(self._run(EXCHANGE, tree), schema)
        return self._finish(tree, set(), placeholders, pushdown=False)

    def prepare(self, tree: exp.Expression) -> exp.Query:
        return self._run(QUERY, tree)

    def _run(self, steps, tree: exp.Expression) -> exp.Query:
        for step in steps:
            tree = step(tree, **{name: getattr(self, name) for name in _wants(step)})
        return tree

    def _finish(self, tree: exp.Query, local_tables: set[str], placeholders: frozenset[str],
                pushdown: bool = True) -> Plan:
        called = operators_called(tree, self.operators)
        models = models_called(tree, self.operators, self.resolve_model)
        parameters = tree.find(exp.Placeholder) is not None
        tables, scans = tuple(t for t in source_tables(tree) if t.lower() not in local_tables), []
        if pushdown and self.pushdown_dialect:
            try:
                tree, scans = push_down(tree.copy(), self.pushdown_dialect, operator_names(self.operators),
                                        self.columns_of, local_tables)
            except OptimizeError as e:  # sqlglot finds no scopes in it: a query that cannot run anywhere
                raise InvalidQuery(f"cannot plan this query: {first_line(e)}") from None
        tree = tag_connection(name_columns(tree), self.operators)
        return Plan(to_sql(tree, placeholders=placeholders), tables, called, tuple(scans),
                    lift_operators(tree, self.operators), models, parameters)


@cache
def _wants(step: Callable) -> tuple[str, ...]:
    """The catalog's attributes a step names after the tree."""
    return tuple(list(inspect.signature(step).parameters)[1:])
