"""Pictures of predictions, where a person would rather look than read: a forecast (its history,
the forecast, the interval band at the level asked and a "now" line), a backtest (each rolling
origin's forecast and band against what happened) or a series' anomalies (the values, what the
model expected, its band and the flagged points), one panel per series up to a limit, as PNG or
SVG (by the file's extension).

The SQL that fetches what to draw and the drawing are plain functions apart, so the CLI (over a
source), the demo (over Flight) and a notebook draw the same picture. matplotlib is an optional
dependency (`pip install 'flight-lstm[plot]'`), imported only to draw.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from flight_lstm.identifiers import quote

MAX_PANELS = 6
FORMATS = (".png", ".svg")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _table(name: str) -> str:
    """A table name as given (`schema.table` is two parts), each part quoted."""
    return ".".join(quote(part) for part in name.split("."))


def _arguments(table: str, key: str | None, ts: str, value: str) -> str:
    return ", ".join([_literal(table), *([f"key => {_literal(key)}"] if key else []),
                      f"ts => {_literal(ts)}", f"value => {_literal(value)}"])


def history_sql(table: str, key: str | None, ts: str, value: str, points: int) -> str:
    """The last `points` observations of each series, as (key, ts, value)."""
    k = quote(key) if key else "NULL"
    return (f"SELECT {k} AS key, {quote(ts)} AS ts, CAST({quote(value)} AS DOUBLE) AS value FROM "
            f"(SELECT *, row_number() OVER (PARTITION BY {k} ORDER BY {quote(ts)} DESC) AS _back "
            f"FROM {_table(table)}) WHERE _back <= {int(points)} AND {quote(ts)} IS NOT NULL")


def forecast_sql(table: str, key: str | None, ts: str, value: str, horizon: int, level: float,
                 model: str | None = None) -> str:
    """forecast_table's rows as (key, ts, mean, lo, hi)."""
    extra = f", model => {_literal(model)}" if model else ""
    k = quote(key) if key else "NULL"
    return (f"SELECT {k} AS key, {quote(ts)} AS ts, mean, lo, hi FROM forecast_table("
            f"{_arguments(table, key, ts, value)}, horizon => {int(horizon)}, level => {float(level)!r}{extra})")


def backtest_sql(table: str, key: str | None, ts: str, value: str, horizon: int, origin: int, level: float,
                 model: str | None = None) -> str:
    """forecast_table's rows from rolling origin `origin` (1: the last `horizon` points hidden, 2:
    the last two horizons, ...), as (key, ts, mean, lo, hi, origin)."""
    k = quote(key) if key else "NULL"
    hidden = (f"WITH _backtest_cut AS (SELECT * EXCLUDE (_back) FROM (SELECT *, row_number() OVER "
              f"(PARTITION BY {k} ORDER BY {quote(ts)} DESC) AS _back FROM {_table(table)}) "
              f"WHERE _back > {int(origin) * int(horizon)}) ")
    return hidden + forecast_sql("_backtest_cut", key, ts, value, horizon, level, model).replace(
        " FROM forecast_table(", f", {int(origin)} AS origin FROM forecast_table(", 1)


def anomaly_sql(table: str, key: str | None, ts: str, value: str, level: float, model: str | None = None,
                points: int | None = None) -> str:
    """anomaly_table's rows as (key, ts, value, expected, lo, hi, is_anomaly), the last `points` of each."""
    extra = f", model => {_literal(model)}" if model else ""
    k = quote(key) if key else "NULL"
    last = f" QUALIFY row_number() OVER (PARTITION BY {k} ORDER BY {quote(ts)} DESC) <= {int(points)}" if points else ""
    return (f"SELECT {k} AS key, {quote(ts)} AS ts, value, expected, lo, hi, is_anomaly FROM anomaly_table("
            f"{_arguments(table, key, ts, value)}, level => {float(level)!r}{extra}){last}")


def draw_forecast(history: pa.Table, forecast: pa.Table, out: str | Path, *, title: str, ts: str, value: str,
                  level: float, max_panels: int = MAX_PANELS) -> Path:
    """One panel per series (the first `max_panels` keys): history in black, the forecast and its
    `level` band in blue, a dashed "now" line at the last observation."""
    plt, out = _pyplot(out)
    keys = _keys(forecast, max_panels)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        past, future = _of(history, key), _of(forecast, key)
        ax.plot(past["ts"], past["value"], color="black", lw=1, label="history")
        ax.plot(future["ts"], future["mean"], color="tab:blue", lw=1.5, label="forecast")
        ax.fill_between(future["ts"], future["lo"], future["hi"], color="tab:blue", alpha=0.25,
                        label=f"{level:.0%} interval")
        if past["ts"]:
            ax.axvline(past["ts"][-1], color="grey", ls="--", lw=1, label="now")
        _label(ax, key, ts, value)
    return _save(plt, fig, axes, out, title)


def draw_backtest(history: pa.Table, forecasts: pa.Table, out: str | Path, *, title: str, ts: str, value: str,
                  level: float, max_panels: int = MAX_PANELS) -> Path:
    """One panel per series: what happened in black, and each origin's forecast with its `level`
    band in a colour of its own, starting where that origin's history ended."""
    plt, out = _pyplot(out)
    keys = _keys(forecasts, max_panels)
    origins = sorted(pc.unique(forecasts.column("origin")).to_pylist())
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        past, mine = _of(history, key), forecasts.filter(
            pc.is_null(forecasts.column("key")) if key is None else pc.equal(forecasts.column("key"), key))
        ax.plot(past["ts"], past["value"], color="black", lw=1, label="actual")
        for i, origin in enumerate(origins):
            f = mine.filter(pc.equal(mine.column("origin"), origin)).sort_by("ts").to_pydict()
            ax.plot(f["ts"], f["mean"], color=colours(i % 10), lw=1.5, label=f"origin {origin}")
            ax.fill_between(f["ts"], _nan(f["lo"]), _nan(f["hi"]), color=colours(i % 10), alpha=0.2)
        _label(ax, key, ts, value)
    return _save(plt, fig, axes, out, title)


def draw_anomalies(scored: pa.Table, out: str | Path, *, title: str, ts: str, value: str, level: float,
                   max_panels: int = MAX_PANELS) -> Path:
    """One panel per series: the values, what the model expected and its `level` band, and the
    flagged points in red."""
    plt, out = _pyplot(out)
    keys = _keys(scored, max_panels)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        rows = _of(scored, key)
        flagged = [i for i, f in enumerate(rows["is_anomaly"]) if f]
        ax.plot(rows["ts"], rows["value"], color="black", lw=1, label="value")
        ax.plot(rows["ts"], rows["expected"], color="tab:blue", lw=1, alpha=0.8, label="expected")
        ax.fill_between(rows["ts"], _nan(rows["lo"]), _nan(rows["hi"]), color="tab:blue", alpha=0.2,
                        label=f"{level:g} interval")
        ax.scatter([rows["ts"][i] for i in flagged], [rows["value"][i] for i in flagged], color="red", s=18,
                   zorder=3, label=f"anomaly ({len(flagged)})")
        _label(ax, key, ts, value)
    return _save(plt, fig, axes, out, title)


def check_output(out: str | Path) -> Path:
    """The picture's path; ValueError unless it names a format we write (before any work is done)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"a picture is written as {' or '.join(FORMATS)}, not {out.suffix or 'no extension'}")
    return out


def _pyplot(out: str | Path):
    out = check_output(out)
    try:
        import matplotlib
    except ImportError:
        raise ValueError("drawing needs matplotlib: pip install 'flight-lstm[plot]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in an SVG: searchable, and smaller
    import matplotlib.pyplot as plt
    return plt, out


def _keys(table: pa.Table, limit: int) -> list:
    keys = pc.unique(table.column("key")).to_pylist()
    if not keys:
        raise ValueError("nothing to draw: the query found no series")
    return sorted(keys, key=lambda k: (k is None, str(k)))[:limit]


def _of(table: pa.Table, key) -> dict[str, list]:
    mine = table.filter(pc.is_null(table.column("key")) if key is None else pc.equal(table.column("key"), key))
    return mine.sort_by("ts").to_pydict()


def _nan(values: list) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def _label(ax, key, ts: str, value: str) -> None:
    ax.set_title(str(key) if key is not None else "", fontsize=10, loc="left")
    ax.set_xlabel(ts)
    ax.set_ylabel(value)
    ax.grid(alpha=0.3)


def _save(plt, fig, axes, out: Path, title: str) -> Path:
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
