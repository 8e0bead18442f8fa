"""Operator calls in a tree: find them, check them, route the model-choosing form to its
engine-side name, and name the models they use.

`sentiment(review, 'sst2-bilstm@4')` becomes `sentiment__with_model(review, 'sst2-bilstm@4')`,
because an engine registers one signature per function name. Users only see the public names.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from sqlglot import exp

from flight_lstm.errors import InvalidQuery
from flight_lstm.plan.duckdb_check import column_name

CONNECTION_ID = "current_connection_id"


def operator_names(operators: Iterable) -> frozenset[str]:
    """Every name an engine registers for the operators: the public ones and the model-choosing ones."""
    return frozenset(name for op in operators for name in (op.name, op.with_model_name))


def operator_calls(tree: exp.Expression, operators: Iterable) -> Iterator[tuple[exp.Anonymous, object]]:
    """(call, its operator) for each operator call in the tree, under either of its names."""
    by_name = {name: op for op in operators for name in (op.name, op.with_model_name)}
    for call in list(tree.find_all(exp.Anonymous)):
        op = by_name.get(call.name.lower())
        if op is not None:
            yield call, op


def bind_operators(tree: exp.Query, operators: Iterable,
                   resolve_model: Callable[[str, str | None], str | None]) -> exp.Query:
    known = set()  # models checked: resolving reads the model cards, once per (kind, name) is enough
    for call, op in operator_calls(tree, operators):
        if call.name.lower() == op.with_model_name:
            raise InvalidQuery(f"unknown function {call.name.lower()}()")
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
        if (op.model_kind, model.this) not in known:
            resolve_model(op.model_kind, model.this)
            known.add((op.model_kind, model.this))
        call.set("this", op.with_model_name)
    return tree


def models_called(tree: exp.Expression, operators: Iterable,
                  resolve_model: Callable[[str, str | None], str | None]) -> frozenset[str]:
    """'name@version' of the model behind each (bound) call: the named one, or the kind's default."""
    asked = set()  # each (kind, name) resolved once: resolving reads the model cards
    for call, op in operator_calls(tree, operators):
        named = call.name.lower() == op.with_model_name
        asked.add((op.model_kind, call.expressions[len(op.params)].this if named else None))
    return frozenset({resolve_model(kind, ref) for kind, ref in asked} - {None})


def tag_connection(tree: exp.Expression, operators: Iterable) -> exp.Expression:
    """Give every operator call its connection's id as one more, last, argument.

    DuckDB calls a UDF on its own worker threads, which carry nothing of the query that asked;
    with the id the engine finds that query's budget there, so a cancel or time limit stops a
    model mid-call (engine/database.py). The last step before SQL is written, once per plan.
    A column that had no name of its own keeps the one DuckDB gives what the user wrote, with
    neither the id nor an operator's internal name in it."""
    operators = list(operators)
    _name_columns(tree, operators)
    for call, _ in operator_calls(tree, operators):
        call.append("expressions", exp.Anonymous(this=CONNECTION_ID))
    return tree


def _name_columns(tree: exp.Expression, operators: list) -> None:
    names: dict[str, str] = {}  # DuckDB's parser once per distinct expression
    for select in list(tree.find_all(exp.Select)):
        columns = []
        for column in select.expressions:
            calls = [] if isinstance(column, (exp.Alias, exp.Star)) else list(operator_calls(column, operators))
            if calls:
                public = column
                if any(call.name.lower() != op.name for call, op in calls):  # a model-choosing call's internal name
                    public = column.copy()
                    for call, op in operator_calls(public, operators):
                        call.set("this", op.name)
                text = public.sql("duckdb")
                if text not in names:
                    names[text] = column_name(text)
                column = exp.alias_(column, names[text], quoted=True, copy=False)
            columns.append(column)
        select.set("expressions", columns)


def operators_called(tree: exp.Expression, operators: Iterable) -> frozenset[str]:
    """Public names of the operators a (bound) tree calls."""
    return frozenset(op.name for _, op in operator_calls(tree, operators))
