"""Expand `forecast_table(...)` in FROM into plain SQL: one row per series and future step.

    SELECT * FROM forecast_table('sales', key => 'store', ts => 'ts', value => 'amount',
                                 horizon => 24, level => 0.95)

gives columns (store, ts, step, mean, lo, hi, forecast_origin). Each series' step is its most
common gap between timestamps; missing steps are filled (as NaN, then interpolated by the model);
duplicate timestamps or timestamps off that regular grid are refused with an error naming the
series. Future timestamps are the last timestamp plus step multiples, in the column's own type
(a TIMESTAMPTZ keeps its time zone; DATE becomes TIMESTAMP). A series with a single point has
no step: its ts is NULL.
"""
from __future__ import annotations

import sqlglot
from sqlglot import exp

from flight_lstm.errors import InvalidQuery

NAME = "forecast_table"
PARAMETERS = ("key", "ts", "value", "horizon", "level", "model")
MAX_FILL = 10  # a filled series may be at most this many times longer than its points (+1000)

TEMPLATE = """
WITH _points AS (
    SELECT {key} AS _key, {ts} AS _ts, epoch_us({ts}) AS _t, CAST({value} AS DOUBLE) AS _value
    FROM {table} WHERE {ts} IS NOT NULL
), _series AS (
    SELECT _key, min(_t) AS _first, max(_t) AS _last, arg_max(_ts, _t) AS _origin, mode(_gap) AS _step,
           count(*) AS _n, count(DISTINCT _t) AS _distinct, first(_value) AS _single
    FROM (SELECT *, _t - lag(_t) OVER (PARTITION BY _key ORDER BY _t) AS _gap FROM _points)
    GROUP BY _key
), _grid AS (
    SELECT _key, unnest(generate_series(_first, _last, _step)) AS _t FROM _series
    WHERE _step > 0 AND (_last - _first) / _step < {max_fill} * _n + 1000
), _lists AS (
    SELECT g._key, list(p._value ORDER BY g._t) AS _values, count(p._t) AS _on_grid
    FROM _grid AS g LEFT JOIN _points AS p ON g._key IS NOT DISTINCT FROM p._key AND g._t = p._t
    GROUP BY g._key
), _forecasts AS (
    SELECT s._key, s._origin, s._step, unnest(forecast_interval(
        CASE
            WHEN s._distinct < s._n THEN error('forecast_table: ' || {label} || ' has duplicate timestamps')
            WHEN s._n = 1 THEN [s._single]
            WHEN l._values IS NULL THEN error('forecast_table: ' || {label} || ' has too sparse timestamps to lay on a regular grid')
            WHEN l._on_grid < s._n THEN error('forecast_table: ' || {label} || ' has irregular timestamps: steps are not multiples of its usual step')
            ELSE l._values
        END, {horizon}, {level}{model})) AS _f
    FROM _series AS s LEFT JOIN _lists AS l ON s._key IS NOT DISTINCT FROM l._key
)
SELECT {key_out}_origin + to_microseconds(_step * _f.step) AS {ts_name}, _f.step AS step, _f.mean AS mean,
       _f.lo AS lo, _f.hi AS hi, _origin + to_microseconds(0) AS forecast_origin
FROM _forecasts
"""


def expand_forecast_tables(tree: exp.Expression) -> exp.Expression:
    for table in list(tree.find_all(exp.Table)):
        call = table.this
        if isinstance(call, exp.Anonymous) and call.name.lower() == NAME:
            body = sqlglot.parse_one(_expansion(call), read="duckdb")
            alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(NAME))
            table.replace(exp.Subquery(this=body, alias=alias))
    return tree


def _expansion(call: exp.Anonymous) -> str:
    positional = [a for a in call.expressions if not isinstance(a, exp.Kwarg)]
    named = {a.this.name.lower(): a.expression for a in call.expressions if isinstance(a, exp.Kwarg)}
    unknown = set(named) - set(PARAMETERS)
    if len(positional) != 1 or unknown:
        raise InvalidQuery(
            f"{NAME}('table', key => 'col', ts => 'col', value => 'col', horizon => N[, level => 0.95]"
            f"[, model => 'name@version']) takes one table name and named parameters"
            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else "")
        )
    for required in ("ts", "value", "horizon"):
        if required not in named:
            raise InvalidQuery(f"{NAME}() needs {required} => ...")
    key = _string(named["key"], "key") if "key" in named else None
    ts = _string(named["ts"], "ts")
    model = named.get("model")
    return TEMPLATE.format(
        table=exp.to_table(_string(positional[0], "table")).sql("duckdb"),
        key=_column(key) if key else "NULL",
        key_out=f"_key AS {_column(key)}, " if key else "",
        label="'series ' || coalesce(s._key::VARCHAR, 'NULL')" if key else "'the series'",
        ts=_column(ts),
        ts_name=_column(ts),
        value=_column(_string(named["value"], "value")),
        horizon=_number(named["horizon"], "horizon"),
        level=_number(named["level"], "level") if "level" in named else "0.95",
        model=f", '{_string(model, 'model')}'" if model is not None else "",
        max_fill=MAX_FILL,
    )


def _string(node: exp.Expression, what: str) -> str:
    if not (isinstance(node, exp.Literal) and node.is_string):
        raise InvalidQuery(f"{NAME}(): {what} must be a string literal")
    return node.this.replace("'", "''") if what == "model" else node.this


def _number(node: exp.Expression, what: str) -> str:
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        node = exp.Literal.number("-" + node.this.this)
    if not (isinstance(node, exp.Literal) and not node.is_string):
        raise InvalidQuery(f"{NAME}(): {what} must be a number")
    return node.this


def _column(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql("duckdb")
