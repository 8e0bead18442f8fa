"""Names the planner writes into a query (a lifted call's column, a source scan), kept apart from
every name the query has, so none of the query's own can stand for one of them."""
from __future__ import annotations

from sqlglot import exp


def unused_prefix(tree: exp.Expression, prefix: str) -> str:
    """`prefix`, lengthened until no name in the query starts with it (a query's own `__lift0_0`
    column had made a lifted batch's column ambiguous, and a CTE named `_scan_0` had stood for the
    source's scan). A source column of such a name, read by a star, is not in the query's text."""
    taken = [i.name.lower() for i in tree.find_all(exp.Identifier)]
    while any(name.startswith(prefix) for name in taken):
        prefix += "_"
    return prefix
