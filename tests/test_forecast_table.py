"""forecast_table(): the long, timestamped form of forecasts, with one gap policy."""
import duckdb
import pyarrow as pa
import pytest

from conftest import make_lake
from flight_lstm.errors import InvalidQuery
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

CALL = "forecast_table('{table}', key => 'store', ts => 'ts', value => 'amount', horizon => {h}{extra})"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = make_lake(tmp_path_factory.mktemp("ft") / "lake.db")
    with duckdb.connect(path) as con:
        con.execute("CREATE TABLE tz AS SELECT store, timezone('Europe/Paris', ts) AS ts, amount FROM sales")
        con.execute("CREATE TABLE gappy AS SELECT * FROM sales WHERE NOT (store = 'a' AND hour(ts) IN (3, 4))")
        con.execute("CREATE TABLE irregular AS SELECT * FROM sales UNION ALL SELECT 'a', TIMESTAMP '2026-01-03 05:30', 1.0")
        con.execute("CREATE TABLE dup AS SELECT * FROM sales UNION ALL SELECT 'b', TIMESTAMP '2026-01-03 05:00', 1.0")
        con.execute("CREATE TABLE daily AS SELECT 'x' AS store, DATE '2026-01-01' + i::INTEGER AS ts, 10.0 + i % 7 AS amount FROM range(60) t(i)")
        con.execute("CREATE TABLE sales_text AS SELECT store, ts, CAST(amount AS VARCHAR) AS amount FROM sales")
        con.execute("CREATE TABLE single AS SELECT 'x' AS store, TIMESTAMP '2026-01-01' AS ts, 5.0 AS amount")
        hourly = "TIMESTAMP '2026-01-01' + to_hours(i::INTEGER)"
        con.execute(f"CREATE TABLE odd AS SELECT k AS store, {hourly} AS ts, CASE WHEN k = 'some_inf' AND i = 5 THEN "
                    "'inf'::DOUBLE WHEN k = 'some_null' AND i = 5 THEN NULL WHEN k IN ('some_inf', 'some_null') "
                    "THEN 10.0 + i % 24 ELSE v END AS amount FROM range(30) t(i), (VALUES ('null', NULL), "
                    "('nan', 'nan'::DOUBLE), ('inf', 'inf'::DOUBLE), ('-inf', '-inf'::DOUBLE), ('some_inf', 0), "
                    "('some_null', 0)) s(k, v)")
        con.execute("CREATE TABLE bc AS SELECT 'x' AS store, TIMESTAMP '-290308-12-22' + to_hours(i::INTEGER) AS ts, "
                    "1.0 * i AS amount FROM range(30) t(i)")
        con.execute("CREATE TABLE bc_dates AS SELECT 'x' AS store, DATE '5877642-06-25 (BC)' + i::INTEGER AS ts, "
                    "1.0 * i AS amount FROM range(30) t(i)")
        con.execute(f"CREATE TABLE endless AS SELECT 'x' AS store, {hourly} AS ts, 1.0 * i AS amount "
                    "FROM range(30) t(i) UNION ALL SELECT 'y', 'infinity'::TIMESTAMP, 1.0")
    return Service(DuckDBSource(path))


def run(service, sql) -> pa.Table:
    schema, batches = service.stream(service.plan(sql))
    return pa.Table.from_batches(list(batches), schema)


def test_one_row_per_series_and_step_with_future_timestamps(service):
    t = run(service, f"SELECT * FROM {CALL.format(table='sales', h=3, extra=', level => 0.9')} ORDER BY store, step")
    assert t.column_names == ["store", "ts", "step", "mean", "lo", "hi", "forecast_origin"]
    rows = t.to_pylist()
    assert [r["store"] for r in rows] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    last = rows[0]["forecast_origin"]
    assert [(r["ts"] - last).total_seconds() for r in rows[:3]] == [3600, 7200, 10800]
    assert all(r["lo"] <= r["mean"] <= r["hi"] for r in rows)


def test_matches_forecast_interval_on_the_same_series(service):
    long = run(service, f"SELECT store, step, mean FROM {CALL.format(table='sales', h=4, extra='')} ORDER BY store, step")
    wide = run(service, "SELECT store, unnest(forecast_interval(list(amount ORDER BY ts), 4, 0.95)).mean AS mean FROM sales GROUP BY store ORDER BY store")
    assert long.column("mean").to_pylist() == pytest.approx(wide.column("mean").to_pylist())


def test_time_zone_is_kept(service):
    t = run(service, f"SELECT ts FROM {CALL.format(table='tz', h=2, extra='')}")
    assert t.schema.field("ts").type.tz is not None


def test_gaps_are_filled_not_shifted(service):
    t = run(service, f"SELECT store, ts, forecast_origin FROM {CALL.format(table='gappy', h=1, extra='')} ORDER BY store")
    origins = {r["store"]: (r["ts"] - r["forecast_origin"]).total_seconds() for r in t.to_pylist()}
    assert origins == {"a": 3600, "b": 3600, "c": 3600}


def test_daily_dates_step_by_a_day_and_stay_dates(service):
    t = run(service, f"SELECT ts, forecast_origin FROM {CALL.format(table='daily', h=2, extra='')} ORDER BY step")
    deltas = [(r["ts"] - r["forecast_origin"]).days for r in t.to_pylist()]
    assert deltas == [1, 2]
    assert t.schema.field("ts").type == pa.date32() == t.schema.field("forecast_origin").type


def test_single_point_series_has_a_forecast_but_no_timestamp(service):
    t = run(service, f"SELECT * FROM {CALL.format(table='single', h=2, extra='')}").to_pylist()
    assert len(t) == 2 and all(r["ts"] is None and r["mean"] == pytest.approx(5.0, rel=1e-3) for r in t)


@pytest.mark.parametrize("table, words", [("irregular", "series a has irregular timestamps"), ("dup", "series b has duplicate timestamps")])
def test_irregular_or_duplicate_timestamps_are_refused(service, table, words):
    with pytest.raises(InvalidQuery, match=words):
        run(service, f"SELECT * FROM {CALL.format(table=table, h=2, extra='')}")


@pytest.mark.parametrize("call, words", [
    ("forecast_table('sales', ts => 'ts', horizon => 2)", "value"),
    ("forecast_table('sales', key => 'store', ts => 'ts', value => 'amount', horizon => 2, color => 'red')", "unknown: color"),
    ("forecast_table(sales, ts => 'ts', value => 'amount', horizon => 2)", "string literal"),
    # A table function smuggled in as the table's name would expand too, past the limit on calls.
    ("forecast_table('forecast_backtest(''sales'', ts => ''ts'', value => ''amount'', horizon => 2)', ts => 'ts', "
     "value => 'amount', horizon => 2)", "the table name must name a table or view"),
    ("forecast_table('unnest([(SELECT 1)])', ts => 'ts', value => 'amount', horizon => 2)", "must name a table"),
    ("forecast_table('sales; DROP TABLE sales', ts => 'ts', value => 'amount', horizon => 2)", "must name a table"),
    ("forecast_table('values', ts => 'ts', value => 'amount', horizon => 2)", "quote a table named by a keyword"),
    ("forecast_table('sales', ts => 'ts', value => 'amount', horizon => 'x')", "number"),
    ("forecast_table('sales', ts => 'ts', value => 'amount', horizon => 1e308)", "horizon => 1e308 must be a whole number"),
    ("forecast_table('sales', ts => 'ts', value => 'amount', horizon => 2.5)", "horizon => 2.5 must be a whole number"),
    ("forecast_table('sales', ts => 'ts', value => 'amount', horizon => 0)", "horizon => 0 must be a whole number"),
    ("forecast_table('sales', ts => 'ts', value => 'amount', horizon => 2, level => 1.5)", "level => 1.5 must be between"),
    *((CALL.format(table="sales", h=2, extra=extra), words) for extra, words in [  # freq and tz: see test_frequencies.py
        (", freq => 'fortnightly'", "freq => 'fortnightly': unknown frequency 'fortnightly'; use one of 5min, 10min"),
        (", freq => 0", "a seasonal period must be a whole number from 1"),
        (", freq => 1.5", "freq must be a frequency name"),
        (", freq => store", "freq must be a frequency name"),
        (", freq => 'monthly'' OR 1=1 --'", "unknown frequency"),
        (", tz => 'Mars/Olympus'", "tz => 'Mars/Olympus' is not a known time zone"),
        (", tz => 'Europe/Berlin'' OR 1=1 --'", "is not a known time zone"),
        (", tz => '" + "x" * 300 + "'", "is not a known time zone"),  # once an OSError: file name too long
        (", tz => '../../../etc/passwd'", "is not a known time zone"),
    ]),
])
def test_bad_calls_name_the_problem(service, call, words):
    with pytest.raises(InvalidQuery, match=words):
        service.plan(f"SELECT * FROM {call}")


def test_composes_with_sql_around_it(service):
    t = run(service, f"SELECT store, max(hi - lo) AS widest FROM {CALL.format(table='sales', h=6, extra='')} GROUP BY store ORDER BY store")
    assert t.num_rows == 3 and all(w > 0 for w in t.column("widest").to_pylist())


def test_several_series_without_key_are_told_to_name_it(service):
    with pytest.raises(InvalidQuery, match="has duplicate timestamps: several series in one table.*key => 'col'"):
        run(service, "SELECT * FROM forecast_table('sales', ts => 'ts', value => 'amount', horizon => 2)")


def test_the_horizon_rule_is_the_operators(service):
    """The planner allows what the operators compute, and refuses the rest with their words."""
    message = "horizon => 8761 is more than 8760 steps, the most a forecast takes"
    for extra in ("", ", freq => '5min'"):
        with pytest.raises(InvalidQuery, match=message):
            service.plan("SELECT * FROM " + CALL.format(table="sales", h=8761, extra=extra))
    t = run(service, f"SELECT count(*) AS n, count(mean) AS means FROM {CALL.format(table='single', h=8760, extra='')}")
    assert t.to_pylist() == [{"n": 8760, "means": 8760}]


@pytest.mark.parametrize("table, value", [
    ("bc", r"290309-12-22 \(BC\) 00:00:00"), ("bc_dates", r"5877642-06-25 \(BC\)"), ("endless", "infinity")])
def test_timestamps_out_of_range_are_refused_naming_the_series(service, table, value):
    series = "y" if table == "endless" else "x"
    with pytest.raises(InvalidQuery, match=f"forecast_table: series {series} has a timestamp outside "
                                           f"0001-01-01 .. 2262-04-11: {value}"):
        run(service, f"SELECT * FROM {CALL.format(table=table, h=2, extra='')}")


def test_series_without_a_finite_value_keep_their_rows_with_null_forecasts(service):
    t = run(service, f"SELECT * FROM {CALL.format(table='odd', h=3, extra='')} ORDER BY store, step").to_pylist()
    by_store = {r["store"]: [x for x in t if x["store"] == r["store"]] for r in t}
    assert sorted(by_store) == ["-inf", "inf", "nan", "null", "some_inf", "some_null"]
    for store in ("-inf", "inf", "nan", "null"):
        rows = by_store[store]
        assert [r["step"] for r in rows] == [1, 2, 3] and all(r["ts"] is not None for r in rows)
        assert all(r["mean"] is None and r["lo"] is None and r["hi"] is None for r in rows), store
    # As the list form: NULL for such a series, and an infinite value is a missing one.
    wide = run(service, "SELECT store, forecast(list(amount ORDER BY ts), 3) AS f FROM odd GROUP BY store").to_pylist()
    assert {r["store"] for r in wide if r["f"] is None} == {"-inf", "inf", "nan", "null"}
    assert [r["mean"] for r in by_store["some_inf"]] == [r["mean"] for r in by_store["some_null"]]


def test_a_value_column_of_text_is_refused_naming_it(service):
    """As anomaly_table: text is not a measurement, even when it holds digits ('12.5' used to be cast)."""
    for sql in (f"SELECT * FROM {CALL.format(table='sales_text', h=2, extra='')}",
                f"SELECT * FROM forecast_backtest('sales_text', key => 'store', ts => 'ts', value => 'amount', "
                f"horizon => 2, origins => 1)"):
        with pytest.raises(InvalidQuery, match='value column "amount" is VARCHAR, not a number'):
            run(service, sql)
