"""Split a query between a source that runs SQL (Dremio) and the local DuckDB with the operators.

What reaches the source, in its own dialect:
- a whole derived table or CTE body that calls no operator and reads only source tables
  (joins, aggregations such as `list(x ORDER BY ts)` for forecast input), or else
- per source table, only the columns the query uses and the WHERE conjuncts that touch that
  table alone (not on the null-supplying side of an outer join, no operator, no subquery).

Each piece becomes a scan `_scan_N` that the source streams into the local query, which keeps
the operators and everything above them. A registered stream can be read once, so a CTE that is
referenced more than once is materialized locally.
"""
from __future__ import annotations

from typing import Callable

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from flight_lstm.plan.views import cte_names

Scans = list[tuple[str, str]]


def push_down(tree: exp.Query, dialect: str, operators: set[str],
              columns_of: Callable[[str], list[str]], local_tables: set[str] = frozenset()) -> tuple[exp.Query, Scans]:
    """Returns the local query and its scans; `columns_of` names a source table's columns, given
    the table as SQL in the source's dialect; `local_tables` live in the local connection."""
    scans: Scans = []
    local = cte_names(tree) | set(local_tables)

    def scan(query: exp.Query) -> str:
        name = f"_scan_{len(scans)}"
        scans.append((name, query.sql(dialect=dialect)))
        return name

    if _pushable(tree, operators, local):
        return exp.select("*").from_(scan(tree)), scans
    for select in list(tree.find_all(exp.Select)):
        _split_aggregation(select, operators, local)
    for query in _whole_candidates(tree):
        if _pushable(query, operators, local):
            query.replace(exp.select("*").from_(scan(query)))
    for scope in reversed(list(traverse_scope(tree))):
        _push_tables(scope, operators, local, lambda t: columns_of(_bare(t).sql(dialect=dialect)), scan)
    _materialize_shared_ctes(tree)
    return tree, scans


def _split_aggregation(select: exp.Select, operators: set[str], local: set[str]) -> None:
    """`SELECT k, op(agg(x)) FROM t WHERE w GROUP BY k HAVING h` becomes
    `SELECT _k0 AS k, op(_a0) FROM (SELECT k AS _k0, agg(x) AS _a0 FROM t WHERE w GROUP BY k) WHERE h'`
    so the grouping and aggregation run in the source, when the operators sit only above them."""
    group = select.args.get("group")
    if not group or not group.expressions or not select.args.get("from_") or not _calls_operator(select, operators):
        return
    inner_parts = [select.args.get(k) for k in ("from_", "where")] + list(select.args.get("joins") or [])
    if any(p is not None and _calls_operator(p, operators) for p in inner_parts) or _calls_operator(group, operators):
        return
    if any(isinstance(k, exp.Literal) for k in group.expressions):
        return  # GROUP BY 1: positions would change meaning
    probe = exp.select("1").from_(select.args["from_"].this.copy())
    if not _pushable(probe, operators, local) or select.args.get("joins"):
        return
    aggs = [a for a in select.find_all(exp.AggFunc) if not a.find_ancestor(exp.AggFunc)]
    if any(_calls_operator(a, operators) for a in aggs):
        return
    keys = {k.sql(): f"_k{i}" for i, k in enumerate(group.expressions)}
    # Output names the query would have had: an alias, a column's name, or the expression's text.
    names = [e.alias_or_name if isinstance(e, (exp.Alias, exp.Column)) else e.sql(dialect="duckdb")
             for e in select.expressions]
    inner = exp.select(*[exp.alias_(k.copy(), f"_k{i}") for i, k in enumerate(group.expressions)])
    inner = inner.from_(select.args["from_"].this.copy())
    for i, agg in enumerate(aggs):
        inner = inner.select(exp.alias_(agg.copy(), f"_a{i}"), copy=False)
        agg.replace(exp.column(f"_a{i}"))
    if select.args.get("where"):
        inner.set("where", select.args["where"].copy())
    inner.set("group", group.copy())

    def to_key(node):
        return exp.column(keys[node.sql()]) if node.sql() in keys else node

    projections = []
    for e, name in zip(select.expressions, names):
        new = e.transform(to_key)
        keeps_name = isinstance(e, exp.Alias) or (isinstance(new, exp.Column) and new.name == name)
        projections.append(new if keeps_name else exp.alias_(new.unalias(), name))
    select.set("expressions", projections)
    if select.args.get("order"):
        select.set("order", select.args["order"].transform(to_key))
    having = select.args.get("having")
    select.set("where", exp.Where(this=having.this.transform(to_key)) if having else None)
    select.set("having", None)
    select.set("group", None)
    select.set("from_", exp.From(this=exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier("_grouped")))))


def _whole_candidates(tree: exp.Query):
    """Derived tables in FROM/JOIN and CTE bodies, outermost first, while still in the tree (one
    inside a query already pushed whole went with it)."""
    for node in list(tree.walk()):
        if isinstance(node, exp.Query) and isinstance(node.parent, (exp.Subquery, exp.CTE)):
            outer = node.parent
            if (isinstance(outer, exp.CTE) or isinstance(outer.parent, (exp.From, exp.Join))) and node.root() is tree:
                yield node


def _pushable(query: exp.Query, operators: set[str], local: set[str]) -> bool:
    if _calls_operator(query, operators) or query.find(exp.Lateral, exp.Unnest):
        return False
    tables = list(query.find_all(exp.Table))
    inner = cte_names(query)
    return bool(tables) and all(
        isinstance(t.this, (exp.Identifier, exp.Dot)) and t.name.lower() not in local | inner for t in tables
    )


def _calls_operator(node: exp.Expression, operators: set[str]) -> bool:
    return any(f.name.lower() in operators for f in node.find_all(exp.Anonymous))


def _push_tables(scope: Scope, operators, local, columns_of, scan) -> None:
    select = scope.expression
    if not isinstance(select, exp.Select):
        return
    tables = {alias: t for alias, t in scope.sources.items()
              if isinstance(t, exp.Table) and isinstance(t.this, (exp.Identifier, exp.Dot))
              and t.name.lower() not in local and not t.name.startswith("_scan_")}
    if not tables:
        return
    known = {alias: columns_of(t) for alias, t in tables.items()}
    star = any(isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star))
               for e in select.expressions)
    nullable = _null_supplying(select, tables)
    where = select.args.get("where")
    conjuncts = list(where.this.flatten()) if where and isinstance(where.this, exp.And) else ([where.this] if where else [])
    for alias, table in tables.items():
        cols = known[alias]
        lower = {c.lower(): c for c in cols}
        if star:
            needed = cols
        else:
            used = {lower[c.name.lower()] for c in select.find_all(exp.Column)
                    if c.name.lower() in lower and _belongs(c, alias, known)}
            needed = [c for c in cols if c in used] or cols[:1]
        filters = [] if alias in nullable else [
            c.copy() for c in conjuncts
            if not _calls_operator(c, operators) and not c.find(exp.Query, exp.AggFunc, exp.Window)
            and c.find(exp.Column) and all(_belongs(col, alias, known) for col in c.find_all(exp.Column))
        ]
        piece = exp.select(*[exp.column(c, quoted=True) for c in needed]).from_(_bare(table))
        for f in filters:
            for col in f.find_all(exp.Column):
                col.set("table", None)
            piece = piece.where(f, copy=False)
        table.replace(exp.Table(this=exp.to_identifier(scan(piece)), alias=exp.TableAlias(this=exp.to_identifier(alias))))


def _bare(table: exp.Table) -> exp.Table:
    bare = table.copy()
    bare.set("alias", None)
    return bare


def _belongs(column: exp.Column, alias: str, known: dict[str, list[str]]) -> bool:
    """Whether a column reference means `alias`'s column: qualified with it, or unqualified and
    found in no other source of the scope."""
    if column.table:
        return column.table == alias
    owners = [a for a, cols in known.items() if column.name.lower() in {c.lower() for c in cols}]
    return owners == [alias]


def _null_supplying(select: exp.Select, tables: dict) -> set[str]:
    """Aliases whose rows an outer join may NULL-extend: filters on them cannot move below it."""
    order = [select.args["from_"].this.alias_or_name] if select.args.get("from_") else []
    nullable: set[str] = set()
    for join in select.args.get("joins") or []:
        name, side = join.this.alias_or_name, (join.side or "").upper()
        if side in ("LEFT", "FULL"):
            nullable.add(name)
        if side in ("RIGHT", "FULL"):
            nullable.update(order)
        order.append(name)
    return nullable


def _materialize_shared_ctes(tree: exp.Query) -> None:
    refs: dict[str, int] = {}
    for t in tree.find_all(exp.Table):
        refs[t.name.lower()] = refs.get(t.name.lower(), 0) + 1
    for cte in tree.find_all(exp.CTE):
        if refs.get(cte.alias_or_name.lower(), 0) > 1:
            cte.set("materialized", True)
