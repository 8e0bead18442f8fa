"""Forecast operators: one row per series, all series of a batch in one model call.

`values` is a LIST<DOUBLE> per row (e.g. `list(amount ORDER BY ts)`); the result is a list of
`horizon` values, or of (step, mean, lo, hi) structs for `forecast_interval`. A NULL or empty
series, one with no finite value, or a NULL parameter, gives NULL; bounds the series cannot support
(one or two points, all zero) are NULL. The model reference may be a frequency ('monthly', or a
seasonal period such as '12'): the registry picks that frequency's model, which is told the period,
and the horizon follows forecast_table's rule for that frequency (frequencies.horizon_cap).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from flight_lstm import frequencies
from udfs.base import Operator, as_array, load_model, parameter_groups

INTERVAL_TYPE = pa.list_(
    pa.struct([("step", pa.int32()), ("mean", pa.float64()), ("lo", pa.float64()), ("hi", pa.float64())])
)


def _series(values) -> pa.Array:
    values = as_array(values)
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        raise TypeError(f"forecast input must be a LIST of numbers, got {values.type}")
    return values


def _run(values, params, model, level_given: bool):
    """Predict each parameter group; return per-row horizons and the flat (mean, lo, hi) columns."""
    series = _series(values)
    n = len(series)
    fitted = load_model("forecast", model)
    freq = frequencies.reference(model)
    period = frequencies.period_of(freq) if freq is not None else None
    named = freq if isinstance(freq, str) else None  # a period leaves the step unknown: the rule's step cap
    horizons = np.zeros(n, dtype=np.int64)
    results = []
    for key, rows in parameter_groups(n, *params):
        horizon, level = int(key[0]), (key[1] if level_given else None)
        if horizon != key[0]:
            raise ValueError(f"horizon must be a whole number, got {key[0]}")
        if horizon > frequencies.horizon_cap(named):
            raise ValueError(f"horizon {horizon} is more than {frequencies.horizon_limit(named)}")
        group = series if len(rows) == n else series.take(pa.array(rows))
        r = fitted.predict(group, horizon=horizon, level=level, period=period)
        ok = rows[r.valid]
        horizons[ok] = horizon
        results.append((ok, r, r.valid))
    offsets = np.concatenate([[0], np.cumsum(horizons)]).astype(np.int32)
    flat = {k: np.zeros(offsets[-1]) for k in ("mean", "lo", "hi")}
    for ok, r, valid in results:
        where = (offsets[ok][:, None] + np.arange(horizons[ok][0] if len(ok) else 0)).ravel()
        for k in flat:
            part = getattr(r, k)
            if part is not None:
                flat[k][where] = part[valid].ravel()
    null = pa.array(horizons == 0)
    return offsets, flat, null


def forecast(values, horizon, model: str | None = None) -> pa.Array:
    """The next `horizon` values of each series (regular steps assumed)."""
    offsets, flat, null = _run(values, [horizon], model, level_given=False)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat["mean"]), mask=null)


def forecast_interval(values, horizon, level, model: str | None = None) -> pa.Array:
    """Steps 1..horizon with mean and a `level` prediction interval (lo <= mean <= hi)."""
    offsets, flat, null = _run(values, [horizon, level], model, level_given=True)
    starts = np.repeat(offsets[:-1], np.diff(offsets))
    steps = (np.arange(offsets[-1]) - starts + 1).astype(np.int32)
    structs = pa.StructArray.from_arrays(
        [pa.array(steps), pa.array(flat["mean"]), pa.array(flat["lo"], from_pandas=True),
         pa.array(flat["hi"], from_pandas=True)],
        fields=list(INTERVAL_TYPE.value_type),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), structs, type=INTERVAL_TYPE, mask=null)


OPERATORS = (
    Operator("forecast", ("DOUBLE[]", "INTEGER"), "DOUBLE[]", forecast, "forecast", row_wise=False),
    Operator(
        "forecast_interval",
        ("DOUBLE[]", "INTEGER", "DOUBLE"),
        "STRUCT(step INTEGER, mean DOUBLE, lo DOUBLE, hi DOUBLE)[]",
        forecast_interval,
        "forecast",
        row_wise=False,
    ),
)
