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
import pyarrow.compute as pc

from flight_lstm import frequencies
from udfs.base import Operator, as_array, load_model, parameter_groups, slices

# Points the model reads at once. It forecasts from each series' last window, but reads every point
# on the way (float64 copies, and filling gaps: about 100 bytes a point at most, measured on
# series with gaps), so 2 million points take about 200 MB. A call of more points is forecast in
# runs of whole series up to this many; one series of more is refused (udfs/base.py: `slices`).
MAX_POINTS = 2_000_000

INTERVAL_TYPE = pa.list_(
    pa.struct([("step", pa.int32()), ("mean", pa.float64()), ("lo", pa.float64()), ("hi", pa.float64())])
)


def _series(values) -> pa.Array:
    values = as_array(values)
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        raise TypeError(f"forecast input must be a LIST of numbers, got {values.type}")
    return values


def _run(operator: str, values, params, model, level_given: bool):
    """Predict each parameter group, at most MAX_POINTS points at a time; return per-row horizons
    and the flat (mean, lo, hi) columns."""
    series = _series(values)
    n = len(series)
    lengths = pc.fill_null(pc.list_value_length(series), 0).to_numpy().astype(np.int64)
    slices(operator, lengths, MAX_POINTS)  # refuses a series over the bound before any work
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
        for part in slices(operator, lengths[rows], MAX_POINTS):
            some = rows[part]
            group = series if len(some) == n else series.take(pa.array(some))
            r = fitted.predict(group, horizon=horizon, level=level, period=period)
            ok = some[r.valid]
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
    offsets, flat, null = _run("forecast", values, [horizon], model, level_given=False)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat["mean"]), mask=null)


def forecast_interval(values, horizon, level, model: str | None = None) -> pa.Array:
    """Steps 1..horizon with mean and a `level` prediction interval (lo <= mean <= hi)."""
    offsets, flat, null = _run("forecast_interval", values, [horizon, level], model, level_given=True)
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
