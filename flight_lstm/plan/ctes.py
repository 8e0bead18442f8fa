"""Which CTE a table name names, as DuckDB finds it, and so which names are the source's tables:
the planner attaches the source for them (views.py), and sizes a query by their types (size.py)."""
from __future__ import annotations

from sqlglot import exp

from flight_lstm.plan.widths import fold


def source_names(tree: exp.Expression) -> list[tuple[str, ...]]:
    """The names (as their parts, in order, each once) the query reads from the source: a table
    function's and those a CTE answers where they stand left out (round 28: a name any CTE had
    anywhere was left out, so `WITH sales AS (SELECT * FROM sales ...)` never read the table)."""
    scopes = cte_scopes(tree)
    return list(dict.fromkeys(tuple(p.name for p in t.parts) for t in tree.find_all(exp.Table)
                              if isinstance(t.this, exp.Identifier)
                              and (t.args.get("db") or defining_cte(t, scopes) is None)))


def cte_scopes(tree: exp.Expression) -> dict[int, dict[str, int]]:
    """Each WITH's CTEs by name: the first position of each (`defining_cte`)."""
    return {id(w): {fold(c.alias_or_name): i for i, c in reversed(list(enumerate(w.expressions)))}
            for w in tree.find_all(exp.With)}


def defining_cte(table: exp.Table, withs: dict[int, dict[str, int]]) -> exp.CTE | None:
    """The CTE a table name names, as DuckDB finds it: in the nearest WITH around the name that
    defines one the name may see (a CTE's body sees the CTEs before it in its WITH, and under WITH
    RECURSIVE itself too, in its recursive part; round 27: all of them had been read as seen, so a
    later CTE, or a body that is no UNION, hid a lake table of that name), else none (a table).
    `withs`: each WITH's first position of each name."""
    name, node, within = fold(table.name), table, None
    while node.parent is not None:
        node = node.parent
        if isinstance(node, exp.CTE):
            within = node
            continue
        with_ = node.args.get("with_") or node.args.get("with")
        at = withs[id(with_)].get(name) if isinstance(with_, exp.With) else None
        if at is None:
            continue
        inside_one = within is not None and within.parent is with_  # the name is in one of these CTEs' bodies
        if not inside_one or at < within.index or (
                at == within.index and with_.args.get("recursive") and _in_recursive_part(table, within)):
            return with_.expressions[at]
    return None


def _in_recursive_part(table: exp.Table, cte: exp.CTE) -> bool:
    """Whether DuckDB reads `table`, in `cte`'s own body under WITH RECURSIVE, as the CTE itself: a
    body that is a UNION (not BY NAME) reads it so in its last part only (round 29: in the other
    parts, or under UNION BY NAME, DuckDB reads the table)."""
    body = cte.this
    if not isinstance(body, exp.Union) or body.args.get("by_name"):
        return False
    node = table
    while node is not cte and node is not body.expression:
        node = node.parent
    return node is body.expression
