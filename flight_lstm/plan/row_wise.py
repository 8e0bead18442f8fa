"""Check a query over a client's own batches (DoExchange): it must work row by row, so that each
batch can run alone and come back as one batch, in order. Whatever needs the whole input is refused
here, by name, before any data moves."""
from __future__ import annotations

from sqlglot import exp

from flight_lstm.errors import InvalidQuery

INPUT = "input"

WHOLE_INPUT = (
    (exp.Join, "a join"), (exp.Group, "GROUP BY"), (exp.Having, "HAVING"), (exp.Order, "ORDER BY"),
    (exp.Limit, "LIMIT"), (exp.Offset, "OFFSET"), (exp.Distinct, "DISTINCT"), (exp.Window, "a window function"),
    (exp.AggFunc, "an aggregate"), (exp.Qualify, "QUALIFY"), (exp.With, "WITH"), (exp.Explode, "unnest"),
)


def check_row_wise(tree: exp.Expression, operators) -> exp.Expression:
    if not isinstance(tree, exp.Select):
        raise InvalidQuery(f"an exchange runs one SELECT ... FROM {INPUT}, got {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, exp.Select) and node is not tree:
            raise InvalidQuery("an exchange query cannot hold a subquery: each batch runs alone")
        if isinstance(node, exp.Table) and (node.name.lower() != INPUT or node.db or not isinstance(node.this, exp.Identifier)):
            raise InvalidQuery(f"an exchange query reads only the table {INPUT!r} (the batches you send)")
        for kind, what in WHOLE_INPUT:
            if isinstance(node, kind):
                raise InvalidQuery(f"{what} needs the whole input; an exchange runs each batch alone, "
                                   "so only row-by-row SQL is allowed")
    whole = {op.name for op in operators if not op.row_wise}
    for call in tree.find_all(exp.Anonymous):
        if call.name.lower() in whole:
            raise InvalidQuery(f"{call.name.lower()}() needs whole series, not one batch of rows; "
                               "use it in a query (GetFlightInfo/DoGet) instead of an exchange")
    if tree.find(exp.Table) is None:
        raise InvalidQuery(f"an exchange query reads the table {INPUT!r}: SELECT ... FROM {INPUT}")
    return tree
