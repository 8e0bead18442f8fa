"""Lift row-wise operator calls out of the query's final projection, so the engine applies them
to whole Arrow batches instead of DuckDB calling them on its 2,048-row chunks.

`SELECT id, sentiment(review) AS s FROM reviews WHERE ...` runs in DuckDB as
`SELECT id, CAST(review AS VARCHAR) AS __lift0_0 FROM reviews WHERE ...`, and the engine puts
`sentiment(__lift0_0)` back in that column's place. Same rows, same names and types (taken from
the original query), but the model sees batches large enough to bucket by length, and torch's
threads do not compete with DuckDB's.

Only where that cannot change the answer: a plain SELECT over a FROM, no DISTINCT, GROUP BY,
HAVING, QUALIFY or ORDER BY (which could name the operator's column), no aggregate in the
projection, and no other clause naming the call's alias. Anything else stays in DuckDB, and so do
the arguments themselves (even operator calls within them).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from sqlglot import exp

from flight_lstm.plan.emit import to_sql
from flight_lstm.plan.fresh_names import unused_prefix

PREFIX = "__lift"


@dataclass(frozen=True)
class LiftedCall:
    operator: str  # the public name
    model: str | None  # the model the call names, or None for the default
    args: tuple[str, ...]  # the inner query's columns holding its arguments


@dataclass(frozen=True)
class Lift:
    sql: str  # the query with each lifted call replaced by its arguments (DuckDB dialect)
    calls: tuple[LiftedCall, ...]  # in projection order


def lift_operators(tree: exp.Expression, operators: Iterable) -> Lift | None:
    """The lifted form of a bound, pushed-down tree, or None when nothing can be lifted."""
    by_name = {name: op for op in operators if op.row_wise for name in (op.name, op.with_model_name)}
    if not _liftable(tree):
        return None
    tree = tree.copy()
    calls, projections = [], []
    named = Counter(c.name.lower() for c in tree.find_all(exp.Column) if not c.table)
    prefix = unused_prefix(tree, PREFIX)
    for projection in tree.expressions:
        call = projection.this if isinstance(projection, exp.Alias) else projection
        op = by_name.get(call.name.lower()) if isinstance(call, exp.Anonymous) else None
        if op is None or _named_elsewhere(named, projection):
            projections.append(projection)
            continue
        args = call.expressions[:len(op.params)]  # then the model's name, if named, and the connection
        model = call.expressions[len(op.params)].this if call.name.lower() == op.with_model_name else None
        names = tuple(f"{prefix}{len(calls)}_{j}" for j in range(len(args)))
        projections += [exp.alias_(exp.cast(a.copy(), kind), name) for a, kind, name in zip(args, op.params, names)]
        calls.append(LiftedCall(op.name, model, names))
    tree.set("expressions", projections)
    return Lift(to_sql(tree), tuple(calls)) if calls else None


def _liftable(tree: exp.Expression) -> bool:
    if not isinstance(tree, exp.Select) or not tree.args.get("from_") or tree.args.get("distinct"):
        return False
    if any(tree.args.get(k) for k in ("group", "having", "qualify", "order")):
        return False
    return not any(p.find(exp.AggFunc) for p in tree.expressions)


def _named_elsewhere(named: Counter, projection: exp.Expression) -> bool:
    """DuckDB lets WHERE and later projections use a projection's alias; such a column must stay.
    `named` counts the query's unqualified column names, taken once: walking the query for each
    projection made 5,000 projections take minutes to plan."""
    if not isinstance(projection, exp.Alias):
        return False
    alias = projection.alias.lower()
    own = sum(1 for c in projection.find_all(exp.Column) if not c.table and c.name.lower() == alias)
    return named[alias] > own
