"""A series operator's points must come in a defined order.

`forecast(list(amount), 24)` aggregates the points in whatever order the engine reads them, so the
model would read a shuffled series and answer without a word. A series operator (one whose first
argument is a LIST) given `list(x)` / `array_agg(x)` straight, with no ORDER BY inside the
aggregate nor in its window, is refused with the fix in the message. A list from anywhere else (a
column, a literal, a subquery) is taken as it is: its order is the writer's.
"""
from __future__ import annotations

from typing import Iterable

from sqlglot import exp

from flight_lstm.errors import InvalidQuery
from flight_lstm.plan.operators import operator_calls


def check_ordered_series(tree: exp.Query, operators: Iterable) -> exp.Query:
    for call, op in operator_calls(tree, operators):
        if not (op.params and op.params[0].endswith("[]") and call.expressions):
            continue
        points = call.expressions[0]
        window = points if isinstance(points, exp.Window) else None
        while isinstance(points, (exp.Window, exp.Filter)):
            points = points.this
        if isinstance(points, exp.ArrayAgg) and not isinstance(points.this, exp.Order) \
                and not (window is not None and window.args.get("order")):
            value = points.this.sql("duckdb")[:60]
            raise InvalidQuery(f"{op.name}() needs its points in time order: write list({value} ORDER BY ts) "
                               f"(with your time column), not list({value})")
    return tree
