"""Forecast frequencies: inferred from timestamps by forecast_table's SQL, calendar-correct future
timestamps, the `freq =>` and `tz =>` options, the frequency reaching the model, and bad input.

Every series is made here, small, and runs through the real planner and DuckDB engine."""
import importlib
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pytest

from flight_lstm import frequencies
from flight_lstm.errors import InvalidQuery
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

OPERATOR_MODULE = importlib.import_module("udfs.forecast")  # `udfs.forecast` is also a function's name

BERLIN = ZoneInfo("Europe/Berlin")


def series(ts_sql: str, n: int, key: str = "x") -> str:
    """A table body: `n` points at `ts_sql` (an expression of i = 0..n-1), value a weekly wave."""
    return f"SELECT '{key}' AS k, {ts_sql} AS ts, 10.0 + i % 7 + i / 10 AS v FROM range({n}) t(i)"


def weekdays(start: str, days: int, skip: str = "") -> str:
    return (f"SELECT 'x' AS k, d AS ts, 10.0 + i % 5 AS v FROM (SELECT DATE '{start}' + i::INTEGER AS d, i "
            f"FROM range({days}) t(i)) WHERE isodow(d) <= 5 {skip}")


TABLES = {
    # month ends through February: a leap year, then a common one
    "month_ends_leap": series("last_day(DATE '2023-01-01' + to_months(i::INTEGER))", 13),  # to 2024-01-31
    "month_ends": series("last_day(DATE '2024-01-01' + to_months(i::INTEGER))", 12),  # to 2024-12-31
    "month_starts": series("TIMESTAMP '2024-01-01 06:00' + to_months(i::INTEGER)", 24),  # to 2025-12-01
    "month_15th": series("CAST(DATE '2024-01-15' + to_months(i::INTEGER) AS DATE)", 18),  # to 2025-06-15
    "quarter_ends": series("last_day(DATE '2021-03-01' + to_months(3 * i::INTEGER))", 12),  # to 2023-12-31
    "quarter_starts": series("TIMESTAMP '2020-01-01' + to_months(3 * i::INTEGER)", 12),  # to 2022-10-01
    "year_ends": series("make_date(2000 + i::INTEGER, 12, 31)", 20),  # to 2019-12-31
    "weekly": series("TIMESTAMP '2026-01-04 08:00' + to_days(7 * i::INTEGER)", 20),  # Sundays, to 2026-05-17
    "business": weekdays("2026-01-05", 26),  # Monday 5 Jan to Friday 30 Jan
    "business_thursday": weekdays("2026-01-05", 25),  # to Thursday 29 Jan
    "one_week": weekdays("2026-01-05", 5),  # Monday to Friday, no weekend skipped yet: daily
    "daily": series("DATE '2026-01-01' + i::INTEGER", 40),
    # 09:00 in Berlin every day across the spring change (29 Mar 2026), and up to the autumn one (25 Oct)
    "berlin_spring": series("timezone('Europe/Berlin', TIMESTAMP '2026-03-15 09:00' + to_days(i::INTEGER))", 22),
    "berlin_autumn": series("timezone('Europe/Berlin', TIMESTAMP '2026-10-01 09:00' + to_days(i::INTEGER))", 24),
    "utc_daily": series("TIMESTAMPTZ '2026-03-01 00:00:00+00' + to_days(i::INTEGER)", 40),
    "berlin_monthly": series("timezone('Europe/Berlin', TIMESTAMP '2025-01-01 00:00' + to_months(i::INTEGER))", 14),
    # hourly in TIMESTAMPTZ through the spring change: fixed hours, whatever the wall clock says
    "hourly_tz": series("TIMESTAMPTZ '2026-03-28 12:00:00+00' + to_hours(i::INTEGER)", 20),
    **{f"every_{m}min": series(f"TIMESTAMP '2026-01-01' + to_minutes({m} * i::INTEGER)", 300)
       for m in (5, 10, 15, 30, 60)},
    "two_hourly": series("TIMESTAMP '2026-01-01' + to_hours(2 * i::INTEGER)", 100),
    "one_point": "SELECT 'x' AS k, DATE '2024-01-31' AS ts, 3.0 AS v",
    # a month missing (June 2024), and the same series with it present as NULL
    "monthly_gap": series("CAST(DATE '2024-01-01' + to_months(i::INTEGER) AS DATE)", 24) + " WHERE i <> 5",
    "monthly_null": "SELECT k, ts, CASE WHEN month(ts) = 6 AND year(ts) = 2024 THEN NULL ELSE v END AS v FROM ("
                    + series("CAST(DATE '2024-01-01' + to_months(i::INTEGER) AS DATE)", 24) + ")",
    "business_gap": weekdays("2026-01-05", 26, "AND d <> DATE '2026-01-14'"),
    "two_keys": series("DATE '2026-01-01' + i::INTEGER", 30, key="d") + " UNION ALL "
                + series("CAST(DATE '2024-01-01' + to_months(i::INTEGER) AS DATE)", 24, key="m"),
    # bad input
    "random": "SELECT 'r' AS k, ts, 1.0 AS v FROM (VALUES (TIMESTAMP '2026-01-01 00:00'), ('2026-01-01 00:07'), "
              "('2026-01-01 01:13'), ('2026-01-02 05:00'), ('2026-01-04 00:01')) t(ts)",
    "mixed": series("TIMESTAMP '2025-01-01' + to_months(i::INTEGER)", 12, key="m") + " UNION ALL "
             + series("TIMESTAMP '2026-01-01' + to_days(i::INTEGER)", 30, key="m") + " WHERE i > 0",
    "dup_monthly": series("CAST(DATE '2024-01-01' + to_months(i::INTEGER) AS DATE)", 12) + " UNION ALL SELECT 'x', DATE '2024-03-01', 1.0",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("freq") / "lake.db")
    with duckdb.connect(path) as con:
        for name, body in TABLES.items():
            con.execute(f"CREATE TABLE {name} AS {body}")
    return Service(DuckDBSource(path))


def run(service, sql) -> pa.Table:
    schema, batches = service.stream(service.plan(sql))
    return pa.Table.from_batches(list(batches), schema)


def call(table, h=3, extra=""):
    return f"forecast_table('{table}', key => 'k', ts => 'ts', value => 'v', horizon => {h}{extra})"


def future(service, table, h=3, extra="") -> list:
    t = run(service, f"SELECT ts FROM {call(table, h, extra)} ORDER BY k, step")
    return t.column("ts").to_pylist()


# -- inferred frequencies and their calendars -----------------------------------------------------


@pytest.mark.parametrize("table, expected", [
    ("month_ends_leap", [date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)]),
    ("month_ends", [date(2025, 1, 31), date(2025, 2, 28), date(2025, 3, 31)]),
    ("month_starts", [datetime(2026, 1, 1, 6), datetime(2026, 2, 1, 6), datetime(2026, 3, 1, 6)]),
    ("month_15th", [date(2025, 7, 15), date(2025, 8, 15), date(2025, 9, 15)]),
    ("quarter_ends", [date(2024, 3, 31), date(2024, 6, 30), date(2024, 9, 30)]),
    ("quarter_starts", [datetime(2023, 1, 1), datetime(2023, 4, 1), datetime(2023, 7, 1)]),
    ("year_ends", [date(2020, 12, 31), date(2021, 12, 31), date(2022, 12, 31)]),
    ("weekly", [datetime(2026, 5, 24, 8), datetime(2026, 5, 31, 8), datetime(2026, 6, 7, 8)]),
    ("business", [date(2026, 2, 2), date(2026, 2, 3), date(2026, 2, 4)]),  # Friday, then Monday on
    ("business_thursday", [date(2026, 1, 30), date(2026, 2, 2), date(2026, 2, 3)]),
    ("daily", [date(2026, 2, 10), date(2026, 2, 11), date(2026, 2, 12)]),
    ("one_week", [date(2026, 1, 10), date(2026, 1, 11), date(2026, 1, 12)]),
])
def test_calendar_frequencies_step_on_the_calendar(service, table, expected):
    assert future(service, table) == expected


def test_a_date_column_stays_a_date_and_a_timestamp_a_timestamp(service):
    dated = run(service, f"SELECT * FROM {call('month_ends')}")
    stamped = run(service, f"SELECT * FROM {call('month_starts')}")
    assert dated.schema.field("ts").type == pa.date32() == dated.schema.field("forecast_origin").type
    assert stamped.schema.field("ts").type == pa.timestamp("us") == stamped.schema.field("forecast_origin").type
    assert dated.column("forecast_origin").to_pylist()[0] == date(2024, 12, 31)


@pytest.mark.parametrize("minutes", [5, 10, 15, 30, 60])
def test_sub_daily_frequencies_step_by_their_minutes(service, minutes):
    last = datetime(2026, 1, 1) + timedelta(minutes=minutes * 299)
    assert future(service, f"every_{minutes}min") == [last + timedelta(minutes=minutes * k) for k in (1, 2, 3)]


def test_another_fixed_step_is_kept_as_it_was(service):
    last = datetime(2026, 1, 1) + timedelta(hours=2 * 99)
    assert future(service, "two_hourly", h=2) == [last + timedelta(hours=2), last + timedelta(hours=4)]


def test_timestamptz_daily_keeps_its_local_hour_across_dst(service):
    spring = future(service, "berlin_spring", h=2, extra=", tz => 'Europe/Berlin'")  # data crosses 29 Mar
    autumn = future(service, "berlin_autumn", h=3, extra=", tz => 'Europe/Berlin'")  # future crosses 25 Oct
    assert [t.astimezone(BERLIN).replace(tzinfo=None) for t in spring] == [datetime(2026, 4, 6, 9), datetime(2026, 4, 7, 9)]
    assert [t.astimezone(BERLIN).replace(tzinfo=None) for t in autumn] == [
        datetime(2026, 10, 25, 9), datetime(2026, 10, 26, 9), datetime(2026, 10, 27, 9)]
    assert [t.astimezone(timezone.utc).hour for t in autumn] == [8, 8, 8]  # 07:00 UTC before the change
    t = run(service, f"SELECT ts FROM {call('berlin_spring', 1, ', tz => ' + repr('Europe/Berlin'))}")
    assert t.schema.field("ts").type.tz is not None  # still a TIMESTAMPTZ


def test_timestamptz_monthly_keeps_local_midnight(service):
    got = future(service, "berlin_monthly", h=2, extra=", tz => 'Europe/Berlin'")  # last 2026-02-01
    assert [t.astimezone(BERLIN).replace(tzinfo=None) for t in got] == [datetime(2026, 3, 1), datetime(2026, 4, 1)]
    assert [t.astimezone(timezone.utc) for t in got] == [datetime(2026, 2, 28, 23, tzinfo=timezone.utc),
                                                         datetime(2026, 3, 31, 22, tzinfo=timezone.utc)]


def test_timestamptz_reads_the_engines_time_zone_by_default(service):
    """The engine's connection keeps the process's time zone (UTC here): days are UTC days."""
    got = future(service, "utc_daily", h=2)
    assert got == [datetime(2026, 4, 10, tzinfo=timezone.utc), datetime(2026, 4, 11, tzinfo=timezone.utc)]
    with pytest.raises(InvalidQuery, match=r"series x has irregular timestamps.*tz => 'Area/City'"):
        run(service, f"SELECT * FROM {call('berlin_spring')}")  # 23-hour day in UTC terms


def test_sub_daily_timestamptz_steps_are_fixed_durations(service):
    got = future(service, "hourly_tz", h=3, extra=", tz => 'Europe/Berlin'")
    last = datetime(2026, 3, 29, 7, tzinfo=timezone.utc)  # 12:00 UTC + 19 h, past the change at 01:00
    assert got == [last + timedelta(hours=k) for k in (1, 2, 3)]


# -- gaps, single points, and which model is asked -------------------------------------------------


@pytest.mark.parametrize("gappy, nulls", [("monthly_gap", "monthly_null")])
def test_missing_calendar_steps_are_filled_not_shifted(service, gappy, nulls):
    filled = run(service, f"SELECT ts, mean FROM {call(gappy)} ORDER BY step")
    wide = run(service, f"SELECT unnest(forecast_interval(list(v ORDER BY ts), 3, 0.95, 'monthly')).mean AS mean FROM {nulls}")
    assert filled.column("ts").to_pylist() == [date(2026, 1, 1), date(2026, 2, 1), date(2026, 3, 1)]
    assert filled.column("mean").to_pylist() == pytest.approx(wide.column("mean").to_pylist())


def test_a_missing_business_day_is_filled_and_weekends_skipped(service):
    assert future(service, "business_gap", h=1) == [date(2026, 2, 2)]


def test_one_point_has_a_timestamp_only_when_freq_names_the_step(service):
    assert future(service, "one_point", h=2) == [None, None]
    assert future(service, "one_point", h=2, extra=", freq => 'monthly'") == [date(2024, 2, 29), date(2024, 3, 31)]
    assert future(service, "one_point", h=2, extra=", freq => 'daily'") == [date(2024, 2, 1), date(2024, 2, 2)]


@pytest.fixture
def model_refs(monkeypatch):
    """The model reference each forecast_interval call received."""
    seen = []
    load = OPERATOR_MODULE.load_model

    def recording(kind, ref):
        seen.append(ref)
        return load(kind, ref)

    monkeypatch.setattr(OPERATOR_MODULE, "load_model", recording)
    return seen


def test_each_series_frequency_reaches_the_model(service, model_refs):
    t = run(service, f"SELECT k, ts FROM {call('two_keys', 1)} ORDER BY k")
    assert t.to_pylist() == [{"k": "d", "ts": date(2026, 1, 31)}, {"k": "m", "ts": date(2026, 1, 1)}]
    assert sorted(set(model_refs)) == ["daily", "monthly"]


@pytest.mark.parametrize("extra, refs", [
    (", freq => 12", ["12"]),
    (", freq => 'Monthly'", ["monthly"]),
    (", model => 'm4-hourly-lstm@1'", ["m4-hourly-lstm@1"]),
    (", freq => 'monthly', model => 'm4-hourly-lstm@1'", ["m4-hourly-lstm@1"]),
])
def test_freq_and_model_choose_what_the_model_is_asked(service, model_refs, extra, refs):
    assert future(service, "month_starts", h=1, extra=extra) == [datetime(2026, 1, 1, 6)]
    assert sorted(set(model_refs)) == refs


def test_the_plan_names_the_model_a_frequency_resolves_to(service):
    assert "tourism-monthly-lstm@2" in service.plan(f"SELECT * FROM {call('month_ends')}").models


def test_the_list_forms_take_a_frequency_too(service):
    t = run(service, "SELECT forecast(list(v ORDER BY ts), 2, 'monthly') AS a, forecast(list(v ORDER BY ts), 2) AS b, "
                     "forecast(list(v ORDER BY ts), 2, '12') AS c FROM month_ends")
    row = t.to_pylist()[0]
    assert row["a"] == pytest.approx(row["c"])  # 'monthly' and period '12' pick the same model
    assert row["a"] != pytest.approx(row["b"])  # the monthly model, not the hourly default


def test_freq_daily_on_weekdays_forecasts_the_weekend_too(service):
    assert future(service, "business", h=2, extra=", freq => 'daily'") == [date(2026, 1, 31), date(2026, 2, 1)]


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("table, extra, words", [
    ("random", "", r"series r has irregular timestamps: no frequency fits them \(its steps are not all multiples"),
    ("mixed", "", "series m mixes frequencies: monthly steps, then daily steps"),
    ("month_starts", ", freq => 'daily'", r"series x: freq => 'daily' contradicts its timestamps \(they look monthly\)"),
    ("daily", ", freq => 'monthly'", r"series x: freq => 'monthly' contradicts its timestamps \(they look daily\)"),
    ("month_ends", ", freq => 'quarterly'", "series x: freq => 'quarterly' contradicts its timestamps"),
    ("every_15min", ", freq => 'hourly'", r"freq => 'hourly' contradicts its timestamps \(they look 15min\)"),
    ("weekly", ", freq => 'business_daily'", r"freq => 'business_daily' contradicts its timestamps \(they look weekly\)"),
    ("two_hourly", ", freq => 'hourly'", r"freq => 'hourly' contradicts its timestamps \(they look like steps of 02:00:00\)"),
    ("dup_monthly", "", "series x has duplicate timestamps"),
])
def test_timestamps_that_do_not_fit_are_refused_naming_the_series(service, table, extra, words):
    with pytest.raises(InvalidQuery, match=words):
        run(service, f"SELECT * FROM {call(table, 2, extra)}")


def test_horizons_beyond_ten_years_are_refused(service):
    with pytest.raises(InvalidQuery, match=r"horizon => 121 is more than 10 years of monthly steps \(120\) for series x"):
        run(service, f"SELECT * FROM {call('month_starts', 121)}")
    with pytest.raises(InvalidQuery, match=r"horizon => 11 is more than 10 years of yearly steps \(10\)"):
        service.plan(f"SELECT * FROM {call('year_ends', 11, ', freq => ' + repr('yearly'))}")
    assert len(future(service, "year_ends", h=10)) == 10
    assert len(future(service, "quarter_ends", h=40)) == 40


def test_an_error_leaves_the_service_answering(service):
    with pytest.raises(InvalidQuery):
        run(service, f"SELECT * FROM {call('mixed')}")
    assert future(service, "month_ends", h=1) == [date(2025, 1, 31)]


def test_the_series_label_without_a_key(service):
    with pytest.raises(InvalidQuery, match="the series has duplicate timestamps"):
        run(service, "SELECT * FROM forecast_table('dup_monthly', ts => 'ts', value => 'v', horizon => 2)")
    t = run(service, "SELECT * FROM forecast_table('month_ends', ts => 'ts', value => 'v', horizon => 1)")
    assert t.column_names == ["ts", "step", "mean", "lo", "hi", "forecast_origin"]


# -- the shared frequency table -----------------------------------------------------------------------


def test_frequency_names_periods_and_caps():
    periods = {name: f.period for name, f in frequencies.FREQUENCIES.items()}
    assert periods == {"5min": 288, "10min": 144, "15min": 96, "30min": 48, "hourly": 24, "daily": 7,
                       "business_daily": 5, "weekly": 52, "monthly": 12, "quarterly": 4, "yearly": 1}
    caps = {name: f.max_horizon for name, f in frequencies.FREQUENCIES.items()}
    assert caps["monthly"] == 120 and caps["quarterly"] == 40 and caps["yearly"] == 10
    assert caps["daily"] == 3652 and caps["weekly"] == 521 and caps["hourly"] == 87660
    assert frequencies.parse(" Monthly ") == "monthly" and frequencies.parse("12") == 12 == frequencies.parse(12)
    assert frequencies.reference("m4-hourly-lstm@1") is None and frequencies.reference("weekly") == "weekly"
    assert frequencies.by_period(12).name == "monthly" and frequencies.period_of("52") == 52
    for bad in ("", "0", "-3", "1.5", True, 10**9):
        with pytest.raises(ValueError):
            frequencies.parse(bad)
