"""Check operator calls and route the model-choosing form to its engine-side name.

`sentiment(review, 'sst2-bilstm@4')` becomes `sentiment__with_model(review, 'sst2-bilstm@4')`,
because an engine registers one signature per function name. Users only see the public names.
"""
from __future__ import annotations

from typing import Callable, Iterable

from sqlglot import exp

from flight_lstm.errors import InvalidQuery

CONNECTION_ID = "current_connection_id"


def bind_operators(tree: exp.Query, operators: Iterable, check_model: Callable[[str, str], None]) -> exp.Query:
    by_name = {op.name: op for op in operators}
    internal = {op.with_model_name for op in by_name.values()}
    for call in list(tree.find_all(exp.Anonymous)):
        name = call.name.lower()
        if name in internal:
            raise InvalidQuery(f"unknown function {name}()")
        op = by_name.get(name)
        if op is None:
            continue
        args = call.expressions
        if len(args) == len(op.params):
            call.set("this", op.name)
            continue
        if len(args) != len(op.params) + 1:
            raise InvalidQuery(
                f"{op.name}() takes {len(op.params)} argument(s) ({', '.join(op.params)}) "
                f"and an optional model name, got {len(args)}"
            )
        model = args[-1]
        if not (isinstance(model, exp.Literal) and model.is_string):
            raise InvalidQuery(f"the model argument of {op.name}() must be a string literal like 'name@version'")
        check_model(op.model_kind, model.this)
        call.set("this", op.with_model_name)
    return tree


def tag_connection(tree: exp.Expression, operators: Iterable) -> exp.Expression:
    """Give every operator call its connection's id as one more, last, argument.

    DuckDB calls a UDF on its own worker threads, which carry nothing of the query that asked;
    with the id the engine finds that query's budget there, so a cancel or time limit stops a
    model mid-call (execute.py). The last step before SQL is written, once per plan."""
    names = {name for op in operators for name in (op.name, op.with_model_name)}
    for call in tree.find_all(exp.Anonymous):
        if call.name.lower() in names:
            call.append("expressions", exp.Anonymous(this=CONNECTION_ID))
    return tree


def operators_called(tree: exp.Expression, operators: Iterable) -> frozenset[str]:
    """Public names of the operators a (bound) tree calls."""
    names = {name: op.name for op in operators for name in (op.name, op.with_model_name)}
    return frozenset(names[f.name.lower()] for f in tree.find_all(exp.Anonymous) if f.name.lower() in names)
