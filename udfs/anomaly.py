"""Anomaly operators: one row per series, every point of it judged from its own past.

`values` is a LIST<DOUBLE> per row, the series in time order (e.g. `list(cpu ORDER BY ts)`), or,
for `anomaly_scores_multi`, a LIST of per-point LIST<DOUBLE> of the same k columns. The result has
one (expected, lo, hi, score) struct per point, in the same order: expected/lo/hi are DOUBLEs
(LISTs of k for the multi form), `score` in [0, 1) is NULL where the point is NULL or has too
little past yet. `start` is the position of the list's first point in its whole series (0 unless
the list is a tail, as a scheduled run passes): the model's answer for a point depends on a
bounded past whose bounds count from the series' start. `level` is one value for the whole call.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from udfs.base import Operator, as_array, constant, load_model, slices

SCORE_TYPE = pa.struct([("expected", pa.float64()), ("lo", pa.float64()), ("hi", pa.float64()),
                        ("score", pa.float64())])
MULTI_SCORE_TYPE = pa.struct([("expected", pa.list_(pa.float64())), ("lo", pa.list_(pa.float64())),
                              ("hi", pa.list_(pa.float64())), ("score", pa.float64())])
# Values (points x columns) the model scores at once. A value costs the model about 200 bytes at
# its peak: its arrays per point (expected, bounds, the statistic and its terms: 170-195 bytes of
# numpy per value measured on 1.2 and 2 million values) and the Arrow in and out; so a million
# values take about 200 MB, beside the network's own buffers for one inference batch (256 runs,
# fixed). A call of more values is scored in runs of whole series up to this many; a longer
# series, in pieces cut at block boundaries, each read from its context start (`_pieces`).
MAX_VALUES = 1_000_000


def _lists(values, what: str) -> pa.ListArray:
    values = as_array(values)
    if pa.types.is_large_list(values.type):
        values = values.cast(pa.list_(values.type.value_type))
    if not pa.types.is_list(values.type):
        raise TypeError(f"{what} must be a LIST, got {values.type}")
    return values


def _doubles(values: pa.Array) -> np.ndarray:
    """float64 with NaN for NULL and non-finite values."""
    out = np.array(pc.fill_null(pc.cast(values, pa.float64(), safe=False), np.nan)
                   .to_numpy(zero_copy_only=False), dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _pieces(lengths: np.ndarray, starts: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """What the model reads, as pieces of at most MAX_VALUES values: (first row read, rows read,
    absolute position of the first row read, rows of it that are answers). A series that fits is
    one piece, all of it answers; a longer one is cut at block boundaries, and each piece is read
    from the context start of its first answer (models.anomaly.context_start), which is all any
    of its answers depends on, so the pieces' answers are the whole series' own."""
    from flight_lstm.models.anomaly import BLOCK, context_start  # loads torch: not on importing udfs

    # A piece's answers: `room` points, or up to a block more where the next cut is aligned down;
    # its context adds less than two blocks before them.
    room = MAX_VALUES // max(k, 1) - 3 * BLOCK
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    fits = lengths * max(k, 1) <= MAX_VALUES
    if room < BLOCK and not fits.all():
        raise ValueError(f"a series of points of {k:,} columns is more than one call can score in pieces "
                         f"({MAX_VALUES:,} values for {4 * BLOCK} points)")
    pieces = [np.stack([offsets[fits], lengths[fits], starts[fits], np.zeros(fits.sum(), np.int64)], axis=1)]
    for i in np.flatnonzero(~fits):  # a few long series at most: each is a million values or more
        first = (starts[i] + np.arange(0, lengths[i], room)) // BLOCK * BLOCK  # block-aligned answer starts
        first[0] = starts[i]
        end = np.append(first[1:], starts[i] + lengths[i])
        read = np.maximum(context_start(first), starts[i])
        pieces.append(np.stack([offsets[i] + read - starts[i], end - read, read, first - read], axis=1))
    return tuple(np.concatenate(pieces).T) if pieces else (np.zeros(0, np.int64),) * 4


def _score(operator: str, points: np.ndarray, series: pa.ListArray, level, start, model):
    """Run the model over each non-NULL series, at most MAX_VALUES values at a time (`_pieces`);
    the result columns over all points."""
    level = constant(level, "level")
    lengths = pc.fill_null(pc.list_value_length(series), 0).to_numpy().astype(np.int64)
    k = points.shape[1] if points.ndim == 2 else 1
    fitted = load_model("anomaly", model)
    starts = np.asarray(pc.fill_null(pc.cast(as_array(start), pa.int64()), 0).to_numpy(), np.int64) \
        if not np.isscalar(start) else np.full(len(series), start or 0, np.int64)
    if level is None or not len(points):
        nan = np.full((len(points), k), np.nan)
        return nan, nan, nan, np.full(len(points), np.nan)
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {float(level):g}")
    starts = np.maximum(starts, 0)
    if lengths.sum() * k <= MAX_VALUES:
        r = fitted.score(points, lengths, float(level), starts)
        return r.expected, r.lo, r.hi, r.score
    expected, lo, hi = (np.full((len(points), k), np.nan) for _ in range(3))
    score = np.full(len(points), np.nan)
    first, count, at, skip = _pieces(lengths, starts, k)
    for part in slices(operator, count, MAX_VALUES, k):  # each piece is judged on its own past
        rows = np.concatenate([np.arange(a, a + n) for a, n in zip(first[part], count[part])])
        answer = np.concatenate([np.arange(s, n) for s, n in zip(skip[part], count[part])]
                                + [np.zeros(0, np.int64)])
        shift = np.repeat(np.cumsum(count[part]) - count[part], count[part] - skip[part])
        kept, dest = answer + shift, rows[answer + shift]
        r = fitted.score(points[rows], count[part], float(level), at[part])
        expected[dest], lo[dest], hi[dest], score[dest] = r.expected[kept], r.lo[kept], r.hi[kept], r.score[kept]
        del r
    return expected, lo, hi, score


def _listed(series: pa.ListArray, fields: list[pa.Array], struct_type: pa.DataType, level) -> pa.Array:
    offsets = pa.array(np.concatenate([[0], np.cumsum(pc.fill_null(pc.list_value_length(series), 0)
                                                      .to_numpy())]).astype(np.int32))
    structs = pa.StructArray.from_arrays(fields, fields=list(struct_type))
    null = series.is_null() if level is not None else pa.array(np.ones(len(series), bool))
    return pa.ListArray.from_arrays(offsets, structs, type=pa.list_(struct_type), mask=null)


def anomaly_scores(values, level, start=0, model: str | None = None) -> pa.Array:
    """Per point of each series: what the model expected, its `level` interval, and the score."""
    series = _lists(values, "anomaly_scores input")
    points = _doubles(pc.list_flatten(series))[:, None]
    expected, lo, hi, score = _score("anomaly_scores", points, series, level, start, model)
    fields = [pa.array(a, from_pandas=True) for a in (expected[:, 0], lo[:, 0], hi[:, 0], score)]
    return _listed(series, fields, SCORE_TYPE, constant(level, "level"))


def anomaly_scores_multi(values, level, start=0, model: str | None = None) -> pa.Array:
    """The same over k columns at once: one score per point over all of them, expected/lo/hi as
    LISTs of k in column order. Every point must list the same number of columns."""
    series = _lists(values, "anomaly_scores_multi input")
    point_lists = _lists(pc.list_flatten(series), "each point of anomaly_scores_multi")
    widths = pc.fill_null(pc.list_value_length(point_lists), 0).to_numpy()
    k = int(widths.max()) if len(widths) else 1
    if len(widths) and (widths != k).any():
        raise ValueError(f"every point must have the same number of columns ({k})")
    points = _doubles(pc.list_flatten(point_lists)).reshape(-1, max(k, 1))
    expected, lo, hi, score = _score("anomaly_scores_multi", points, series, level, start, model)
    n, k = expected.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    fields = [pa.ListArray.from_arrays(offsets, pa.array(a.ravel(), from_pandas=True)) for a in (expected, lo, hi)]
    fields.append(pa.array(score, from_pandas=True))
    return _listed(series, fields, MULTI_SCORE_TYPE, constant(level, "level"))


OPERATORS = (
    Operator("anomaly_scores", ("DOUBLE[]", "DOUBLE", "BIGINT"),
             "STRUCT(expected DOUBLE, lo DOUBLE, hi DOUBLE, score DOUBLE)[]", anomaly_scores, "anomaly",
             row_wise=False),
    Operator("anomaly_scores_multi", ("DOUBLE[][]", "DOUBLE", "BIGINT"),
             "STRUCT(expected DOUBLE[], lo DOUBLE[], hi DOUBLE[], score DOUBLE)[]", anomaly_scores_multi,
             "anomaly", row_wise=False),
)
