"""forecast_backtest(): rolling-origin forecasts on the user's own series, beside seasonal naive
and naive, with numbers checked by hand on a tiny series."""
import duckdb
import numpy as np
import pyarrow as pa
import pytest

from conftest import make_lake
from flight_lstm import backtest
from flight_lstm.errors import InvalidQuery
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource
from udfs import forecast_interval

YEARLY = [10.0, 12.0, 11.0, 13.0, 15.0, 14.0, 16.0, 18.0]  # 2016..2023


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = make_lake(tmp_path_factory.mktemp("backtest") / "lake.db")
    with duckdb.connect(path) as con:
        con.execute(f"CREATE TABLE yearly AS SELECT make_date(2016 + i::INTEGER, 1, 1) AS ts, {YEARLY}[i + 1] AS v "
                    "FROM range(8) t(i)")
        con.execute("CREATE TABLE holes AS SELECT k, TIMESTAMP '2026-01-01' + to_hours(i::INTEGER) AS ts, CASE "
                    "WHEN k = 'nan' THEN 'nan'::DOUBLE WHEN i = 30 THEN v ELSE 10 + i % 24 + i * 7 % 5 END AS v "
                    "FROM range(120) t(i), (VALUES ('inf', 'inf'::DOUBLE), ('null', NULL), ('nan', NULL)) s(k, v)")
    return Service(DuckDBSource(path))


def run(service, sql) -> pa.Table:
    return service.collect(service.plan(sql), {})


def test_a_tiny_series_by_hand(service):
    [row] = run(service, "SELECT * FROM forecast_backtest('yearly', ts => 'ts', value => 'v', horizon => 2, "
                         "origins => 2, level => 0.8)").to_pylist()
    assert (row["freq"], row["origins"], row["points"]) == ("yearly", 2, 4)
    # Origin 1 hides 16, 18: history 10 12 11 13 15 14, naive MAE 1.6, seasonal naive (m = 1) 14, 14.
    # Origin 2 hides 15, 14: history 10 12 11 13, naive MAE 5/3, seasonal naive 13, 13.
    assert row["seasonal_naive_mase"] == pytest.approx((2 / 1.6 + 4 / 1.6 + 2 / (5 / 3) + 1 / (5 / 3)) / 4)
    assert row["naive_mase"] == pytest.approx(row["seasonal_naive_mase"])
    assert row["seasonal_naive_smape"] == pytest.approx((200 * 2 / 30 + 200 * 4 / 32 + 200 * 2 / 28 + 200 * 1 / 27) / 4)
    # Empirical 80% half-width: 2 (both origins), times sqrt(step): 16 in [12, 16], 18 not in 14 +- 2.83.
    assert row["seasonal_naive_coverage"] == pytest.approx(0.75)
    w2 = 2 * np.sqrt(2)
    msis = [4 / 1.6, (2 * w2 + 10 * (18 - 14 - w2)) / 1.6, 4 / (5 / 3), 2 * w2 / (5 / 3)]
    assert row["seasonal_naive_msis"] == pytest.approx(np.mean(msis))
    # The model's numbers from its own forecasts of the same two histories.
    f = forecast_interval(pa.array([YEARLY[:6], YEARLY[:4]]), 2, 0.8, "yearly").to_pylist()
    actual, scale = [[16, 18], [15, 14]], [1.6, 5 / 3]
    errors = [abs(y - s["mean"]) / scale[o] for o in range(2) for y, s in zip(actual[o], f[o])]
    assert row["mase"] == pytest.approx(np.mean(errors))
    assert row["beats_seasonal_naive"] == (row["mase"] < row["seasonal_naive_mase"])
    inside = [s["lo"] <= y <= s["hi"] for o in range(2) for y, s in zip(actual[o], f[o])]
    assert row["coverage"] == pytest.approx(np.mean(inside))


def test_one_row_per_series_with_every_measure(service):
    t = run(service, "SELECT * FROM forecast_backtest('sales', key => 'store', ts => 'ts', value => 'amount', "
                     "horizon => 24) ORDER BY store")
    assert t.column("store").to_pylist() == ["a", "b", "c"]
    assert t.column("origins").to_pylist() == [3, 3, 3] and t.column("points").to_pylist() == [72, 72, 72]
    for column in ("mase", "seasonal_naive_mase", "naive_mase", "smape", "coverage", "msis", "seasonal_naive_msis"):
        assert all(v is not None and v >= 0 for v in t.column(column).to_pylist()), column


def test_non_finite_values_are_missing_values(service):
    """One +inf in a history once made the seasonal-naive scale inf: every scaled score 0, coverage 1."""
    rows = run(service, "SELECT * FROM forecast_backtest('holes', key => 'k', ts => 'ts', value => 'v', horizon => 24) "
                        "ORDER BY k").to_pylist()
    assert [r["k"] for r in rows] == ["inf", "null"]  # an all-NaN series has nothing to measure: no row
    inf, null = ({c: v for c, v in r.items() if c != "k"} for r in rows)
    assert inf == pytest.approx(null) and 0 < inf["mase"] < 10 and 0 < inf["msis"] < 100


@pytest.mark.parametrize("extra, message", [
    (", origins => 0", "origins => 0 must be a whole number from 1 to 100"),
    (", origins => 2.5", "origins => 2.5 must be a whole number"),
    (", level => 1", "level => 1 must be between 0 and 1"),
    (", colour => 'red'", "unknown: colour"),
])
def test_bad_parameters_name_themselves(service, extra, message):
    with pytest.raises(InvalidQuery, match=message):
        run(service, f"SELECT * FROM forecast_backtest('sales', key => 'store', ts => 'ts', value => 'amount', "
                     f"horizon => 24{extra})")


def test_the_cli_backtest_reads_a_query_and_gives_the_sql_numbers_and_a_verdict(service):
    rows = backtest.forecast_backtest(service, "SELECT store, ts, amount FROM sales", 24)
    direct = run(service, "SELECT * FROM forecast_backtest('sales', key => 'store', ts => 'ts', value => 'amount', "
                          "horizon => 24) ORDER BY store")
    # The same numbers, up to float noise: the engine may batch the series differently for the model.
    assert rows.column("mase").to_pylist() == pytest.approx(direct.column("mase").to_pylist(), rel=1e-4)
    verdict = backtest.forecast_verdict(rows, 0.95)
    beats = sum(direct.column("beats_seasonal_naive").to_pylist())
    assert verdict.startswith(f"beats seasonal naive on {beats} of 3 series; median MASE ")
    one = backtest.forecast_backtest(service, "SELECT ts, v FROM yearly", 2, origins=2, level=0.8)
    assert one.num_rows == 1 and one.column("points").to_pylist() == [4]
    with pytest.raises(InvalidQuery, match="reads \\(key, ts, value\\) or \\(ts, value\\) rows"):
        backtest.forecast_backtest(service, "SELECT ts FROM yearly", 2)
    assert backtest.forecast_verdict(one.slice(0, 0), 0.95).startswith("no series long enough")


def test_a_sentiment_backtest_by_hand():
    positive = np.array([True, True, False, False, True])
    model = np.array([0.9, -0.2, -0.8, 0.3, np.nan])  # right, wrong, right, wrong, unscored
    vader = np.array([0.5, 0.1, -0.1, -0.4, 0.2])  # all right on the four scored
    report = backtest.sentiment_backtest(pa.array(["a"] * 5), positive, model, vader)
    assert (report["texts"], report["unscored"]) == (4, 1)
    assert report["model"]["accuracy"] == 0.5 and report["vader"]["accuracy"] == 1.0
    assert report["model"]["confusion"] == {"positive labelled positive": 1, "negative labelled positive": 1,
                                            "positive labelled negative": 1, "negative labelled negative": 1}
    # P(positive) 0.95, 0.4, 0.1, 0.65 fall in bins 4, 2, 0, 3 with shares 1, 1, 0, 0.
    assert [c["texts"] for c in report["calibration"]] == [1, 0, 1, 1, 1]
    assert report["expected_calibration_error"] == pytest.approx((0.1 + 0.6 + 0.65 + 0.05) / 4)
    assert list(backtest.labels_of(pa.array(["Positive", "negative"]))) == [True, False]
    assert list(backtest.labels_of(pa.array([True, False]))) == [True, False]
    with pytest.raises(InvalidQuery, match="found 'meh'"):
        backtest.labels_of(pa.array(["positive", "meh"]))
