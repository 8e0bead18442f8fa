"""Pictures from SQL: a forecast and a series' anomalies, one panel per series, PNG or SVG."""
import re

import duckdb
import pyarrow as pa
import pytest

from conftest import make_lake
from flight_lstm import plot
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = make_lake(tmp_path_factory.mktemp("plot") / "lake.db")
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE cpu AS SELECT store AS host, ts, amount + CASE WHEN hour(ts) = 5 AND day(ts) = 8 "
                    "THEN 500 ELSE 0 END AS load FROM sales")
    return Service(DuckDBSource(path))


def run(service, sql) -> pa.Table:
    return service.collect(service.plan(sql), {})


def panels(svg: str) -> int:
    return len(re.findall(r'<g id="axes_\d+"', svg))


def test_a_forecast_picture_has_a_panel_per_series_with_history_band_and_now(service, tmp_path):
    history = run(service, plot.history_sql("sales", "store", "ts", "amount", 72))
    forecast = run(service, plot.forecast_sql("sales", "store", "ts", "amount", 24, 0.95))
    out = plot.draw_forecast(history, forecast, tmp_path / "f.svg", title="sales: m4-hourly-lstm@2, 24 steps, 95%",
                             ts="ts", value="amount", level=0.95)
    svg = out.read_text()
    assert panels(svg) == 3 and "m4-hourly-lstm@2" in svg and "95% interval" in svg and ">now<" in svg
    two = plot.draw_forecast(history, forecast, tmp_path / "f.png", title="t", ts="ts", value="amount", level=0.95,
                             max_panels=2)
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(two)
    assert image.shape[:2] == (520, 1000)  # two panels of 2.6 x 10 inches at 100 dpi
    blue = (image[..., 2] > 0.6) & (image[..., 0] < 0.4)
    assert blue.sum() > 500  # the forecast and its band are drawn


def test_an_anomaly_picture_marks_the_flagged_points_in_red(service, tmp_path):
    scored = run(service, plot.anomaly_sql("cpu", "host", "ts", "load", 0.999, points=200))
    assert 0 < pa.compute.sum(scored.column("is_anomaly")).as_py()
    out = plot.draw_anomalies(scored, tmp_path / "a.png", title="load", ts="ts", value="load", level=0.999)
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(out)
    red = (image[..., 0] > 0.8) & (image[..., 1] < 0.2) & (image[..., 2] < 0.2)
    assert image.shape[:2] == (780, 1000) and red.sum() > 20


def test_names_are_quoted_and_bad_output_is_a_clear_error(service, tmp_path):
    with pytest.raises(Exception, match='column "no"such" not found'):
        run(service, plot.history_sql("sales", "store", 'no"such', "amount", 3))
    with pytest.raises(ValueError, match=r"\.png or \.svg, not \.jpg"):
        plot.draw_forecast(pa.table({"key": ["a"]}), pa.table({"key": ["a"]}), tmp_path / "x.jpg", title="",
                           ts="ts", value="v", level=0.9)
    with pytest.raises(ValueError, match="no series"):
        plot.draw_anomalies(pa.table({"key": pa.array([], pa.string())}), tmp_path / "x.png", title="", ts="ts",
                            value="v", level=0.9)


def test_a_backtest_picture_draws_each_origin_against_what_happened(service, tmp_path):
    forecasts = pa.concat_tables([run(service, plot.backtest_sql("sales", "store", "ts", "amount", 12, origin, 0.9))
                                  for origin in (1, 2, 3)])
    last = run(service, "SELECT store, max(ts) AS ts FROM sales GROUP BY store ORDER BY store").to_pylist()
    for origin in (1, 2, 3):  # origin k forecasts the k-th last horizon: its last step is (k - 1) * 12 hours back
        mine = forecasts.filter(pa.compute.equal(forecasts.column("origin"), origin))
        latest = max(r["ts"] for r in mine.to_pylist() if r["key"] == "a")
        assert (last[0]["ts"] - latest).total_seconds() == (origin - 1) * 12 * 3600
    history = run(service, plot.history_sql("sales", "store", "ts", "amount", 60))
    svg = plot.draw_backtest(history, forecasts, tmp_path / "b.svg", title="backtest", ts="ts", value="amount",
                             level=0.9).read_text()
    assert panels(svg) == 3 and all(f"origin {k}" in svg for k in (1, 2, 3)) and ">actual<" in svg
