"""Published views become CTEs of the query that names them, so predictions query like tables."""
from __future__ import annotations

from sqlglot import exp

from flight_lstm.plan.ctes import cte_scopes, defining_cte, source_names
from flight_lstm.plan.widths import fold


def source_tables(tree: exp.Expression) -> list[str]:
    """Tables the query reads from the source (CTE references and table functions left out)."""
    return list(dict.fromkeys(".".join(parts) for parts in source_names(tree)))


def inline_views(tree: exp.Query, views: dict[str, exp.Query]) -> exp.Query:
    """Prepend a CTE for each view the query names (its own CTEs of the same name win where they are
    seen; round 29: a CTE of the name anywhere had kept the view out everywhere). Where the query's
    own WITH names a CTE as the view, the view joins that WITH under a name of its own, and the names
    that read it are pointed there, read by their name still."""
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
    taken = {i.name.lower() for i in tree.find_all(exp.Identifier)}
    used: dict[str, str] = {}  # each view a name reads where no CTE answers it -> the CTE it becomes
    for table in list(tree.find_all(exp.Table)):
        name = table.name.lower()
        if table.db or not isinstance(table.this, exp.Identifier) or name not in views \
                or defining_cte(table, scopes) is not None:
            continue
        if name not in used:  # where the query's own WITH names a CTE so, the view joins it renamed
            used[name] = name if fold(name) not in shadowed else _unused(f"__view_{name}", taken)
        if used[name] != name:  # round 30: it had been left out, and DuckDB said "Circular reference"
            table.set("alias", table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name)))
            table.set("this", exp.to_identifier(used[name]))
    for name in reversed(list(used)):
        tree = _prepend_cte(tree, used[name], views[name])
    return tree


def _unused(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _prepend_cte(tree: exp.Query, name: str, body: exp.Query) -> exp.Query:
    cte = exp.CTE(this=body.copy(), alias=exp.TableAlias(this=exp.to_identifier(name)))
    with_ = tree.args.get("with_")
    if with_ is None:
        tree.set("with_", exp.With(expressions=[cte]))
    else:
        with_.set("expressions", [cte, *with_.expressions])
    return tree
