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
# not interruptible) at 1.3 GB. Down any chain of nested queries, starting from any query in the
# tree (CTEs followed where named), the product of each select list's star projections (`*`, `t.*`,
# `COLUMNS(...)`) is at most this.
MAX_STAR_COPIES = 64
# PIVOT makes a column per value of its ON lists' product and aggregate: 4 lists of 17 values and 3
# aggregates (337 bytes) made 250,563 columns and bound for 33 s past a 5 s limit. The columns a
# PIVOT makes, times the star copies above it, are at most MAX_PIVOT_COLUMNS (about a second of
# binding); an ON list without IN (...) (DuckDB reads its values from the data) counts as
# PIVOT_LIMIT values, the most DuckDB then accepts (engine/database.py sets it).
MAX_PIVOT_COLUMNS = 10_000
PIVOT_LIMIT = 10_000
# Struct types grow the same way: `SELECT {'a': s, 'b': s} AS s FROM (...)` doubles s's type at
# each level, 14 levels (542 bytes) bound for 3.65 s and 16 reached the process's memory cap. A
# column's type width is estimated as its leaves: a struct, row, map or zip of values holds the
# sum of theirs, anything else the widest of its parts (a lambda's variable counts as the widest
# column in scope), and no column of any query may pass MAX_TYPE_WIDTH (2^12). Left: DuckDB also
# unifies structs by field name where values meet (CASE, COALESCE, lists, UNION: {'a': s} and
# {'b': s} make STRUCT(a, b)); counting those as sums refused anomaly_events over 64 columns
# (its lists of fields taken from one struct), so they count as their widest part.
MAX_TYPE_WIDTH = 4096
COMBINING = {"row", "struct_pack", "struct_insert", "struct_update", "struct_concat", "list_zip", "array_zip",
             "map", "map_from_entries", "union_value"}  # DuckDB's functions typed as a STRUCT, MAP or UNION of their arguments
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
    try:  # both walk down nested queries and CTEs one Python frame per level
        bound, (stars, pivoted), widest = _bound_nodes(tree), _copies(tree), _widest_type(tree)
    except RecursionError:
        raise InvalidQuery("the query nests queries or CTEs too deeply; split it") from None
    if bound > MAX_BOUND_NODES:
        raise InvalidQuery(f"the query's CTEs, each counted wherever it is named, make more than "
                           f"{MAX_BOUND_NODES:,} SQL nodes; name each CTE fewer times, or split the query")
    if widest > MAX_TYPE_WIDTH:
        raise InvalidQuery(f"a column's type would hold more than {MAX_TYPE_WIDTH:,} fields (structs, rows or maps "
                           "built of the same columns through nested queries); name the fields you need")
    if stars > MAX_STAR_COPIES:
        raise InvalidQuery(f"star projections (*, t.*, COLUMNS(...)) would copy a column more than {MAX_STAR_COPIES} "
                           "times through the nested queries; name the columns")
    if pivoted > MAX_PIVOT_COLUMNS:
        raise InvalidQuery(f"a PIVOT would make more than {MAX_PIVOT_COLUMNS:,} columns (its ON values, listed with "
                           f"IN (...) or else up to {PIVOT_LIMIT:,}, times its aggregates, times star copies of them)")
    return tree


def _copies(tree: exp.Expression) -> tuple[int, int]:
    """(The most copies star expansion can make of one column, the most columns a PIVOT and the
    stars above it can make): down each chain of queries reading queries (subqueries in FROM and
    joins, set operations, CTEs where named), from any query in the tree, the product of each
    select list's projections that hold a star (count(*) aside), and of a PIVOT's columns."""
    bodies = _cte_bodies(tree)
    known: dict[str, tuple[int, int]] = {}
    seen: dict[tuple[int, frozenset], tuple[int, int]] = {}  # each node once per CTE scope

    def copies(node: exp.Expression | None, inside: frozenset) -> tuple[int, int]:
        key = (id(node), inside)
        if key not in seen:
            stars, pivoted = source(node, inside)
            pivots = node.args.get("pivots") if isinstance(node, (exp.Table, exp.Subquery)) else None
            seen[key] = stars, max([pivoted, *(_pivot_columns(p) for p in pivots or [])])
        return seen[key]

    def source(node: exp.Expression | None, inside: frozenset) -> tuple[int, int]:
        if isinstance(node, exp.Subquery):
            return copies(node.this, inside)
        if isinstance(node, exp.SetOperation):
            return _most(*(copies(part, inside) for part in _set_parts(node)))
        if isinstance(node, exp.Pivot):  # DuckDB's PIVOT statement, as a subquery
            stars, pivoted = copies(node.this, inside)
            return stars, max(pivoted, _pivot_columns(node))
        if isinstance(node, exp.Table):
            name = node.name.lower()
            if node.args.get("db") or name not in bodies or name in inside:
                return 1, 1
            if name not in known:
                known[name] = _most(*(copies(body, inside | {name}) for body in bodies[name]))
            return known[name]
        if not isinstance(node, exp.Select):
            return 1, 1
        stars = max(1, sum(1 for p in node.expressions if any(
            isinstance(n, (exp.Star, exp.Columns)) and not isinstance(n.parent, exp.Count) for n in p.walk())))
        sources = [node.args.get("from_") or node.args.get("from"), *(node.args.get("joins") or [])]
        below = _most((1, 1), *(copies(s.this, inside) for s in sources if s is not None))
        return stars * below[0], stars * below[1]

    # Every query in the tree heads a chain: one in a scalar subquery, IN or EXISTS is bound too.
    return _most(*(copies(q, frozenset()) for q in tree.find_all(exp.Query, exp.Pivot)))


def _widest_type(tree: exp.Expression) -> int:
    """The widest column type (in leaves, as MAX_TYPE_WIDTH's comment estimates) of any query in
    the tree, each query's columns estimated from the columns of what it reads."""
    bodies = _cte_bodies(tree)
    seen: dict[tuple[int, int], dict[str, int]] = {}
    known: dict[str, dict[str, int]] = {}  # each CTE once, by name (as `_copies`)

    def columns(node: exp.Expression | None, inside: frozenset, outer: int = 1) -> dict[str, int]:
        """`outer`: the widest column a correlated reference may name, in a subquery within an expression."""
        key = (id(node), outer)
        if key not in seen:
            seen[key] = read(node, inside, outer)
        return seen[key]

    def read(node: exp.Expression | None, inside: frozenset, outer: int) -> dict[str, int]:
        if isinstance(node, (exp.Subquery, exp.Pivot)):
            return columns(node.this, inside, outer)
        if isinstance(node, exp.SetOperation):
            found = [columns(part, inside, outer) for part in _set_parts(node)]
            most = max((w for f in found for w in f.values()), default=1)
            return dict.fromkeys(found[0], most)  # named as the first query names them
        if isinstance(node, exp.Table):
            name = node.name.lower()
            if node.args.get("db") or name not in bodies or name in inside:
                return {}
            if name not in known:
                found = [columns(body, inside | {name}) for body in bodies[name]]
                known[name] = {k: max(f.get(k, 1) for f in found) for f in found for k in f}
            return known[name]
        if not isinstance(node, exp.Select):
            return {}
        scope: dict[str, int] = {}
        for source in [node.args.get("from_") or node.args.get("from"), *(node.args.get("joins") or [])]:
            if source is not None:
                for k, w in columns(source.this, inside, outer).items():
                    scope[k] = max(scope.get(k, 1), w)
        widest = max([*scope.values(), outer])
        out: dict[str, int] = {}
        for projection in node.expressions:
            if projection.find(exp.Star, exp.Columns) and not projection.find(exp.Count):
                for k, w in scope.items():
                    out[k] = max(out.get(k, 1), w)
            else:
                out[projection.alias_or_name.lower()] = width(projection, scope, widest, inside)
        return out

    def width(node: exp.Expression, scope: dict[str, int], widest: int, inside: frozenset) -> int:
        if isinstance(node, exp.Column):
            return scope.get(node.name.lower(), widest)
        if isinstance(node, exp.Identifier):  # a lambda's variable
            return widest
        if isinstance(node, exp.Query):  # a scalar subquery: as wide as its widest column
            return max(columns(node, inside, widest).values(), default=1)
        if isinstance(node, (exp.Alias, exp.PropertyEQ)):
            return width(node.this if isinstance(node, exp.Alias) else node.expression, scope, widest, inside)
        if isinstance(node, (exp.Literal, exp.DataType)):
            return 1
        parts = [width(child, scope, widest, inside) for child in node.iter_expressions()] or [1]
        combining = isinstance(node, (exp.Struct, exp.Tuple, exp.Map, exp.VarMap, exp.ArraysZip)) or (
            isinstance(node, exp.Func) and node.sql_name().lower() in COMBINING) or (
            isinstance(node, exp.Anonymous) and node.name.lower() in COMBINING)
        return sum(parts) if combining else max(parts)

    return max((w for q in tree.find_all(exp.Query, exp.Pivot) for w in columns(q, frozenset()).values()), default=1)


def _set_parts(node: exp.SetOperation) -> list[exp.Expression]:
    """The queries a chain of UNION/INTERSECT/EXCEPT joins, left to right, walked without recursing:
    a chain of a thousand is one level, not a thousand."""
    parts, chain = [], [node]
    while chain:
        n = chain.pop()
        if isinstance(n, exp.SetOperation):
            chain += [n.left, n.right]
        else:
            parts.append(n)
    return parts[::-1]


def _most(*pairs: tuple[int, int]) -> tuple[int, int]:
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


def _pivot_columns(pivot: exp.Pivot) -> int:
    """The columns a PIVOT makes: the product of its ON lists' values times its aggregates (an
    UNPIVOT makes rows, not columns)."""
    if pivot.args.get("unpivot"):
        return 1
    simple = "using" in pivot.args  # DuckDB's `PIVOT t ON a IN (...) USING sum(x)`
    on = pivot.expressions if simple else pivot.args.get("fields") or []
    aggregates = (pivot.args.get("using") or []) if simple else pivot.expressions
    values = 1
    for field in on:
        listed = isinstance(field, exp.In) and not field.args.get("query") \
            and not any(isinstance(v, (exp.Subquery, exp.Select)) for v in field.expressions)
        values *= len(field.expressions) if listed else PIVOT_LIMIT
    return values * max(1, len(aggregates))


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
