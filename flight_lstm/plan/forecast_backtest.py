"""Expand `forecast_backtest(...)` in FROM: how well forecasts would have done on the user's own
series, beside seasonal naive and naive, one row per series.

    SELECT * FROM forecast_backtest('sales', key => 'store', ts => 'ts', value => 'amount',
                                    horizon => 24[, origins => 3][, level => 0.95][, freq, tz, model])

Each series is read as forecast_table reads it (plan/forecast_table.py: frequency inferred or
given, gaps filled, the same model chosen). Rolling origins: origin k (1..origins) hides the
last k * horizon points, forecasts the next `horizon` from what is left and compares them with
the hidden points (an origin needs 2 points of history). NaN and infinite values are missing, as
forecast_table reads them: one +inf once made the scale inf and every scaled score 0. Over all
origins and steps whose actual value and seasonal-naive forecast exist (a series with none, too
short or with no finite value, has no row):

- `mase`: mean absolute error over the in-sample seasonal-naive MAE of the history (the series'
  seasonal period m, or 1 when the history holds no m + 1 points), as in M4;
- `smape`: mean of 200 |y - f| / (|y| + |f|) (steps where both are 0 left out);
- `coverage` of the `level` interval, and `msis`, the scaled interval score (M4's MSIS);
- for seasonal naive (the value one period back), with empirical intervals (the `level`
  quantile of its in-sample absolute errors, widened by sqrt of the periods ahead), and for
  naive (the last value): the same measures where they are defined.

`beats_seasonal_naive` is mase < seasonal_naive_mase. Aggregate the rows for a verdict (the CLI's
`flight-lstm backtest` prints one).
"""
from __future__ import annotations

from sqlglot import exp

from flight_lstm.plan.arguments import TableCall, expansion
from flight_lstm.plan.forecast_table import INPUTS, PARAMETERS, forecast_call, series_inputs

NAME = "forecast_backtest"
USAGE = ("'table', key => 'col', ts => 'col', value => 'col', horizon => N[, origins => 3][, level => 0.95]"
         "[, freq => 'monthly' or a period][, tz => 'Europe/Berlin'][, model => 'name@version']")
ORIGINS, MAX_ORIGINS = "3", 100

BACKTEST = """), _origins AS (
    SELECT *, unnest(range(1, {origins} + 1)) AS _o FROM _inputs
), _cuts AS (
    SELECT *, _input[1:len(_input) - _o * {horizon}] AS _history,
           _input[len(_input) - _o * {horizon} + 1:len(_input) - (_o - 1) * {horizon}] AS _actual
    FROM _origins WHERE len(_input) - _o * {horizon} >= 2
), _seasons AS (
    SELECT *, CASE WHEN len(_history) > _period THEN _period ELSE 1 END AS _m
    FROM (SELECT *, {period} AS _period FROM _cuts)
), _fitted AS (
    SELECT *, list_transform(range(_m + 1, len(_history) + 1), lambda t: abs(_history[t] - _history[t - _m])) AS _errors,
           list_filter(_history, lambda x: x IS NOT NULL)[-1] AS _last, {call} AS _forecast
    FROM _seasons
), _steps AS (
    SELECT _key, _freq, _o, list_avg(_errors) AS _scale, _last,
           unnest(_forecast) AS _f, unnest(_actual) AS _y,
           unnest(list_transform(range(1, {horizon} + 1), lambda i: _history[len(_history) - _m + (i - 1) % _m + 1])) AS _sn,
           unnest(list_transform(range(1, {horizon} + 1), lambda i: list_aggregate(_errors, 'quantile_cont', {level})
                                                                     * sqrt(ceil(i / _m)))) AS _sw
    FROM _fitted
), _measured AS (
    SELECT *, 2 / (1 - {level}) AS _penalty FROM _steps
    WHERE _y IS NOT NULL AND _sn IS NOT NULL AND _scale > 0
)
SELECT {key_out}coalesce(_freq, 'fixed') AS freq, count(DISTINCT _o) AS origins, count(*) AS points,
       avg(abs(_y - _f.mean) / _scale) AS mase,
       avg(abs(_y - _sn) / _scale) AS seasonal_naive_mase,
       avg(abs(_y - _last) / _scale) AS naive_mase,
       avg(200 * abs(_y - _f.mean) / nullif(abs(_y) + abs(_f.mean), 0)) AS smape,
       avg(200 * abs(_y - _sn) / nullif(abs(_y) + abs(_sn), 0)) AS seasonal_naive_smape,
       avg(200 * abs(_y - _last) / nullif(abs(_y) + abs(_last), 0)) AS naive_smape,
       avg(CASE WHEN _f.lo IS NULL THEN NULL WHEN _y BETWEEN _f.lo AND _f.hi THEN 1.0 ELSE 0.0 END) AS coverage,
       avg(CASE WHEN _y BETWEEN _sn - _sw AND _sn + _sw THEN 1.0 ELSE 0.0 END) AS seasonal_naive_coverage,
       avg((_f.hi - _f.lo + _penalty * greatest(_f.lo - _y, 0) + _penalty * greatest(_y - _f.hi, 0)) / _scale) AS msis,
       avg((2 * _sw + _penalty * greatest(_sn - _sw - _y, 0) + _penalty * greatest(_y - _sn - _sw, 0)) / _scale)
           AS seasonal_naive_msis,
       avg(abs(_y - _f.mean) / _scale) < avg(abs(_y - _sn) / _scale) AS beats_seasonal_naive
FROM _measured
GROUP BY _key, _freq
"""


def expand_forecast_backtests(tree: exp.Expression) -> exp.Expression:
    for table in list(tree.find_all(exp.Table)):
        call = table.this
        if isinstance(call, exp.Anonymous) and call.name.lower() == NAME:
            alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(NAME))
            table.replace(exp.Subquery(this=expansion(_expansion(call)), alias=alias))
    return tree


def _expansion(node: exp.Anonymous) -> str:
    call = TableCall.of(node, PARAMETERS + ("origins",), USAGE)
    origins = call.number("origins") if "origins" in call else ORIGINS
    if not origins.isdigit() or not 1 <= int(origins) <= MAX_ORIGINS:
        raise call.error(f"origins => {origins} must be a whole number from 1 to {MAX_ORIGINS}")
    fields = series_inputs(call)
    call_sql = forecast_call(fields["model"], fields["horizon"], fields["level"], series="_history")
    return (INPUTS + BACKTEST).format(**fields, origins=int(origins), call=call_sql)
