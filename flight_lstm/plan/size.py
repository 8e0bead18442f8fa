"""Bound the work of planning one query, which no time limit or cancel reaches.

Planning holds a query slot and Python's lock while sqlglot parses, writes and parses again, and
DuckDB parses once more; its cost grows with the planned tree, about 0.1 ms a node here. A few
bytes of text can grow that tree a thousandfold: each table function call (`forecast_table(...)`
is 135 bytes) expands into about 2,000 nodes of SQL, and a published view is inlined wherever
it is named. Forty calls in 5 kB planned for 12 s, and a handful of such requests held every
slot for a minute. So a query may expand at most MAX_TABLE_FUNCTIONS table functions (counted
before any is expanded; none can hide in another's arguments, which are literals and plain table
names: arguments.py), and its planned tree may hold at most MAX_PLAN_NODES nodes (counted
before it is written as SQL): planning stays within a few seconds (2.6 s for the largest
allowed here, four `anomaly_events` over 64 columns each).
"""
from __future__ import annotations

from sqlglot import exp

from flight_lstm.errors import InvalidQuery
from flight_lstm.plan import anomaly_table, forecast_backtest, forecast_table

MAX_TABLE_FUNCTIONS = 8
MAX_PLAN_NODES = 20_000
# DuckDB binds a CTE anew wherever it is named, so a chain of CTEs that each name the one before
# twice doubles DuckDB's work per link: 30 links (506 tokens) took a server to 24 GB before the
# kernel killed it, binding outside any memory limit. The tree counted with each CTE as large as
# its body, wherever it is named, may hold at most MAX_BOUND_NODES: about a second of DuckDB's
# binding, and twice the largest legal plan's (eight forecast_backtests: 234,000).
MAX_BOUND_NODES = 500_000
# Star expansion multiplies columns the same way: `SELECT *, *, * FROM (...)` ten deep made
# 59,049 columns of one and bound for 8.8 s; eleven deep ran 31 s past a 3 s limit (binding is
# not interruptible) at 1.3 GB. Down any chain of nested queries (CTEs followed where named), the
# product of each select list's star projections (`*`, `t.*`, `COLUMNS(...)`) is at most this.
MAX_STAR_COPIES = 64
EXPANDED = {forecast_table.NAME, forecast_backtest.NAME, anomaly_table.TABLE, anomaly_table.EVENTS}


def check_table_functions(tree: exp.Expression) -> exp.Expression:
    calls = sum(1 for t in tree.find_all(exp.Table)
                if isinstance(t.this, exp.Anonymous) and t.this.name.lower() in EXPANDED)
    if calls > MAX_TABLE_FUNCTIONS:
        raise InvalidQuery(f"a query may call at most {MAX_TABLE_FUNCTIONS} table functions "
                           f"({', '.join(sorted(EXPANDED))}); this one calls {calls}")
    return tree


def check_plan_size(tree: exp.Expression) -> exp.Expression:
    for count, _ in enumerate(tree.walk(), start=1):
        if count > MAX_PLAN_NODES:
            raise InvalidQuery(f"the query plans to more than {MAX_PLAN_NODES:,} SQL nodes (its views and "
                               "table functions expanded); split it into smaller queries")
    if _bound_nodes(tree) > MAX_BOUND_NODES:
        raise InvalidQuery(f"the query's CTEs, each counted wherever it is named, make more than "
                           f"{MAX_BOUND_NODES:,} SQL nodes; name each CTE fewer times, or split the query")
    if _star_copies(tree) > MAX_STAR_COPIES:
        raise InvalidQuery(f"star projections (*, t.*, COLUMNS(...)) would copy a column more than {MAX_STAR_COPIES} "
                           "times through the nested queries; name the columns")
    return tree


def _star_copies(tree: exp.Expression) -> int:
    """The most copies star expansion can make of one column: down each chain of queries reading
    queries (subqueries in FROM and joins, set operations, CTEs where named), the product of
    each select list's projections that hold a star (count(*) aside)."""
    bodies = _cte_bodies(tree)
    known: dict[str, int] = {}

    def copies(node: exp.Expression | None, inside: frozenset) -> int:
        if isinstance(node, exp.Subquery):
            return copies(node.this, inside)
        if isinstance(node, exp.SetOperation):
            return max(copies(node.left, inside), copies(node.right, inside))
        if isinstance(node, exp.Table) and not node.args.get("db"):
            name = node.name.lower()
            if name in bodies and name not in inside:
                if name not in known:
                    known[name] = max(copies(body, inside | {name}) for body in bodies[name])
                return known[name]
            return 1
        if not isinstance(node, exp.Select):
            return 1
        stars = sum(1 for p in node.expressions if any(
            isinstance(n, (exp.Star, exp.Columns)) and not isinstance(n.parent, exp.Count) for n in p.walk()))
        sources = [node.args.get("from_") or node.args.get("from"), *(node.args.get("joins") or [])]
        below = max((copies(s.this, inside) for s in sources if s is not None), default=1)
        return max(stars, 1) * below

    return copies(tree, frozenset())


def _bound_nodes(tree: exp.Expression) -> int:
    """The tree's nodes with every bare table name that names a CTE counted as that CTE's body,
    itself counted the same way (once per body: memoized); a CTE naming itself (recursive) counts
    once. Names are matched case-blind across the whole query: never fewer than DuckDB binds."""
    bodies = _cte_bodies(tree)
    sizes: dict[str, int] = {}

    def size(node: exp.Expression, inside: frozenset) -> int:
        total = 0
        for n in node.walk():
            total += 1
            name = n.name.lower() if isinstance(n, exp.Table) and not n.args.get("db") else None
            if name in bodies and name not in inside:
                if name not in sizes:
                    sizes[name] = max(size(body, inside | {name}) for body in bodies[name])
                total += sizes[name]
            if total > MAX_BOUND_NODES:
                return total
        return total

    return size(tree, frozenset())


def _cte_bodies(tree: exp.Expression) -> dict[str, list[exp.Expression]]:
    """Each CTE name (folded, as DuckDB folds it) with the bodies it is given anywhere in the query."""
    bodies: dict[str, list[exp.Expression]] = {}
    for cte in tree.find_all(exp.CTE):
        bodies.setdefault(cte.alias_or_name.lower(), []).append(cte.this)
    return bodies
