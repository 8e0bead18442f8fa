"""Published views become CTEs of the query that names them, so predictions query like tables."""
from __future__ import annotations

from sqlglot import exp

from flight_lstm.plan.ctes import cte_scopes, defining_cte, source_names
from flight_lstm.plan.widths import fold


def cte_names(tree: exp.Expression) -> set[str]:
    return {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}


def source_tables(tree: exp.Expression) -> list[str]:
    """Tables the query reads from the source (CTE references and table functions left out)."""
    return list(dict.fromkeys(".".join(parts) for parts in source_names(tree)))


def inline_views(tree: exp.Query, views: dict[str, exp.Query]) -> exp.Query:
    """Prepend a CTE for each view the query names (its own CTEs of the same name win where they are
    seen; round 29: a CTE of the name anywhere had kept the view out everywhere)."""
    if not views:
        return tree
    with_ = tree.args.get("with_")
    scopes, shadowed = cte_scopes(tree), {fold(c.alias_or_name) for c in with_.expressions} if with_ else set()
    for table in tree.find_all(exp.Table):  # Flight SQL clients list views under schema main
        if table.db.lower() == "main" and not table.catalog and table.name.lower() in views:
            table.set("db", None)
    for column in tree.find_all(exp.Column):  # and SQLAlchemy writes main.view.column
        if column.db.lower() == "main" and not column.catalog and column.table.lower() in views:
            column.set("db", None)
    used = [  # each view a name reads where no CTE answers it (its name free in the WITH it joins)
        name
        for name in dict.fromkeys(t.name.lower() for t in tree.find_all(exp.Table) if not t.db
                                  and isinstance(t.this, exp.Identifier) and defining_cte(t, scopes) is None)
        if name in views and fold(name) not in shadowed
    ]
    for name in reversed(used):
        tree = _prepend_cte(tree, name, views[name])
    return tree


def _prepend_cte(tree: exp.Query, name: str, body: exp.Query) -> exp.Query:
    cte = exp.CTE(this=body.copy(), alias=exp.TableAlias(this=exp.to_identifier(name)))
    with_ = tree.args.get("with_")
    if with_ is None:
        tree.set("with_", exp.With(expressions=[cte]))
    else:
        with_.set("expressions", [cte, *with_.expressions])
    return tree
