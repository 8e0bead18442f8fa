"""Bound parameters keep their Arrow type (server/flight_sql.py: `_bound`), through a real server
and the real ADBC Flight SQL driver: `SELECT ? AS v, typeof(?) AS t` with one or more rows bound.

Before, each value became a Python object and DuckDB typed it by that object: a timestamp('s') of
2**62, a date32 of 2**31 - 1 and a timestamp in zone 'Mars/Olympus' or '+25:00' were INTERNAL
(an OverflowError, pytz's UnknownTimeZoneError, with a traceback in the log); a decimal256(41, 0)
was bound as a DOUBLE and a month-day-nano interval as INTEGER[] [1, 2, 3]; and an int64 column of
1 and 3000000000 was INTEGER for one row and BIGINT for the next, refused as "results of different
types"."""
from __future__ import annotations

import datetime
import decimal
import logging

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import numpy as np
import pyarrow as pa
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

D = decimal.Decimal
SQL = "SELECT ? AS v, typeof(?) AS t, CAST(? AS VARCHAR) AS s"


@pytest.fixture
def conn(server):
    with flight_sql.connect(server) as c:
        yield c


def bind(conn, column: pa.Array, sql: str = SQL) -> list[dict]:
    """`column` bound to every placeholder of `sql`, one row of parameters per value."""
    with conn.cursor() as cur:
        cur.execute(sql, pa.record_batch([column] * sql.count("?"), names=[f"p{i}" for i in range(sql.count("?"))]))
        return cur.fetch_arrow_table().to_pylist()


def typed(conn, column: pa.Array) -> list[tuple[str, str | None]]:
    return [(row["t"], row["s"]) for row in bind(conn, column)]


REFUSED = {  # the finding's rows, and their neighbours: (column, words the error must hold)
    "timestamp('s') of 2**62": (pa.array([2 ** 62], pa.timestamp("s")), "timestamps from year 1 to 9999"),
    "date32 of 2**31 - 1": (pa.array([2 ** 31 - 1], pa.date32()), "dates from year 1 to 9999"),
    "date32 before year 1": (pa.array([-719_163], pa.date32()), "dates from year 1 to 9999"),
    "timestamp('ms') after year 9999": (pa.array([2 ** 63 - 1], pa.timestamp("ms")), "timestamps from year 1 to 9999"),
    "zone Mars/Olympus": (pa.array([0], pa.timestamp("s", tz="Mars/Olympus")), "unknown time zone 'Mars/Olympus'"),
    "zone +25:00": (pa.array([0], pa.timestamp("s", tz="+25:00")), "unknown time zone '+25:00'"),
    "zone ../../etc/passwd": (pa.array([0], pa.timestamp("s", tz="../../etc/passwd")), "unknown time zone"),
    "decimal256(41, 0)": (pa.array([D(12345678901234567890123456789012345678901)], pa.decimal256(41, 0)),
                          "at most 38 digits"),
    "decimal of negative scale": (pa.array([D(100)], pa.decimal128(5, -2)), "at most 38 digits"),
    "month_day_nano (1, 2, 3)": (pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval()),
                                 "intervals hold months, days and microseconds; this one has nanoseconds"),
    "duration of nanoseconds": (pa.array([1], pa.duration("ns")), "this duration has nanoseconds"),
    "duration past an interval": (pa.array([2 ** 62], pa.duration("s")), "durations of at most"),
    "zoned timestamp of nanoseconds": (pa.array([1], pa.timestamp("ns", tz="UTC")), "this one has nanoseconds"),
}


@pytest.mark.parametrize("what", REFUSED)
def test_values_duckdb_cannot_hold_exactly_are_invalid_argument_naming_the_parameter(conn, caplog, what):
    column, words = REFUSED[what]
    with caplog.at_level(logging.ERROR, logger="flight_lstm.server"), \
            pytest.raises(adbc_driver_manager.ProgrammingError) as caught:  # INVALID_ARGUMENT, never INTERNAL
        bind(conn, column)
    message = str(caught.value)
    assert "INVALID_ARGUMENT" in message and f"parameter 1 ('p0', {column.type})" in message and words in message
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]  # no traceback in the log


def test_an_int64_column_keeps_one_type_across_rows(conn):
    assert typed(conn, pa.array([1, 3_000_000_000], pa.int64())) == [("BIGINT", "1"), ("BIGINT", "3000000000")]
    # Every row, whichever runs first, however the client splits the rows into batches.
    assert typed(conn, pa.array([3_000_000_000, None, 1], pa.int64())) == [
        ("BIGINT", "3000000000"), ('"NULL"', None), ("BIGINT", "1")]
    assert typed(conn, pa.array([1, 2], pa.int64())) == [("INTEGER", "1"), ("INTEGER", "2")]  # a literal's type
    assert typed(conn, pa.array([2 ** 64 - 1, 1], pa.uint64())) == [("UBIGINT", str(2 ** 64 - 1)), ("UBIGINT", "1")]


def test_a_wide_decimal_is_a_decimal_not_a_double(conn):
    value = D(12345678901234567890123456789012345678)
    assert typed(conn, pa.array([value], pa.decimal256(38, 0))) == [("DECIMAL(38,0)", str(value))]
    rows = bind(conn, pa.array([value], pa.decimal256(38, 0)),
                "SELECT ? = 12345678901234567890123456789012345678::DECIMAL(38, 0) AS exact, "
                "? = 12345678901234567890123456789012345677::DECIMAL(38, 0) AS off_by_one")
    assert rows == [{"exact": True, "off_by_one": False}]
    assert typed(conn, pa.array([D("1.25"), D("-0.01")], pa.decimal128(5, 2))) == [
        ("DECIMAL(5,2)", "1.25"), ("DECIMAL(5,2)", "-0.01")]


KEPT = {  # column: what DuckDB types and prints each value as
    "float32": (pa.array([0.1], pa.float32()), [("FLOAT", "0.1")]),
    "float16": (pa.array([1.5], pa.float16()), [("FLOAT", "1.5")]),
    "timestamp('s')": (pa.array([0, -62_135_596_800, 253_402_300_799], pa.timestamp("s")),
                       [("TIMESTAMP_S", "1970-01-01 00:00:00"), ("TIMESTAMP_S", "0001-01-01 00:00:00"),
                        ("TIMESTAMP_S", "9999-12-31 23:59:59")]),
    "timestamp('ms')": (pa.array([-1], pa.timestamp("ms")), [("TIMESTAMP_MS", "1969-12-31 23:59:59.999")]),
    "timestamp('us')": (pa.array([1], pa.timestamp("us")), [("TIMESTAMP", "1970-01-01 00:00:00.000001")]),
    "timestamp('ns')": (pa.array([1], pa.timestamp("ns")), [("TIMESTAMP_NS", "1970-01-01 00:00:00.000000001")]),
    "timestamp in Europe/Berlin": (pa.array([1], pa.timestamp("us", tz="Europe/Berlin")),
                                   [("TIMESTAMP WITH TIME ZONE", "1970-01-01 00:00:00.000001+00")]),
    "timestamp at +01:00": (pa.array([1], pa.timestamp("ms", tz="+01:00")),
                            [("TIMESTAMP WITH TIME ZONE", "1970-01-01 00:00:00.001+00")]),
    "date32 at its ends": (pa.array([-719_162, 2_932_896], pa.date32()), [("DATE", "0001-01-01"), ("DATE", "9999-12-31")]),
    "date64": (pa.array([86_400_000], pa.date64()), [("DATE", "1970-01-02")]),
    "time64('ns')": (pa.array([1], pa.time64("ns")), [("TIME_NS", "00:00:00.000000001")]),
    "time32('ms')": (pa.array([1_000], pa.time32("ms")), [("TIME", "00:00:01")]),
    # microseconds alone, as DuckDB reads an Arrow duration: not "1 day 01:01:01", whose day is a
    # calendar day (23 or 25 hours across a DST change)
    "duration('s')": (pa.array([90_061], pa.duration("s")), [("INTERVAL", "25:01:01")]),
    "duration('us') below zero": (pa.array([-1], pa.duration("us")), [("INTERVAL", "-00:00:00.000001")]),
    "month_day_nano of whole microseconds": (pa.array([pa.MonthDayNano([1, 2, 3_000])], pa.month_day_nano_interval()),
                                             [("INTERVAL", "1 month 2 days 00:00:00.000003")]),
    "int8": (pa.array([-5], pa.int8()), [("INTEGER", "-5")]),
    "string": (pa.array(["x"]), [("VARCHAR", "x")]),
    "fixed-size binary": (pa.array([b"ab"], pa.binary(2)), [("BLOB", "ab")]),
    "bool": (pa.array([True]), [("BOOLEAN", "true")]),
}


@pytest.mark.parametrize("what", KEPT)
def test_values_keep_their_arrow_type_and_value(conn, what):
    column, expected = KEPT[what]
    assert typed(conn, column) == expected


def test_a_python_int_still_fits_an_integer_argument(conn):
    """ADBC sends a Python int as int64: a column of small values is INTEGER, as the bare int was,
    so an operator's INTEGER argument (forecast's horizon) takes it (DuckDB casts no BIGINT there)."""
    with conn.cursor() as cur:
        cur.execute("SELECT store, len(forecast(list(amount ORDER BY ts), ?)) AS n FROM sales GROUP BY store "
                    "ORDER BY store", (3,))
        assert cur.fetchall() == [("a", 3), ("b", 3), ("c", 3)]
        cur.execute("SELECT ? + 1 AS n, ? AS d", (2, datetime.date(2026, 1, 2)))
        assert cur.fetchall() == [(3, datetime.date(2026, 1, 2))]


FUZZED = [pa.int8(), pa.int64(), pa.uint32(), pa.uint64(), pa.float16(), pa.float32(), pa.date32(), pa.date64(),
          pa.time32("s"), pa.time32("ms"), pa.time64("us"), pa.time64("ns"),
          *[pa.duration(unit) for unit in ("s", "ms", "us", "ns")],
          *[pa.timestamp(unit, tz) for unit in ("s", "ms", "us", "ns") for tz in (None, "UTC", "Asia/Kolkata", "-03:30")],
          pa.decimal128(38, 10), pa.decimal128(5, 5), pa.decimal256(38, 0), pa.decimal256(76, 3),
          pa.month_day_nano_interval()]


@pytest.mark.parametrize("kind", FUZZED, ids=str)
def test_any_bit_pattern_is_bound_or_refused_never_an_internal_error(conn, kind):
    """Random values of every width, small ones and any: each is bound, or INVALID_ARGUMENT."""
    rng = np.random.default_rng(abs(hash(str(kind))) % 2 ** 32)
    size = 16 if kind == pa.month_day_nano_interval() else kind.bit_width // 8
    for small in (True, False):
        data = bytearray(rng.integers(0, 256, 4 * size, dtype=np.uint8).tobytes())
        if small:  # the low two bytes of each value only: mostly values in range
            data = bytearray(b if i % size < 2 else 0 for i, b in enumerate(data))
        column = pa.Array.from_buffers(kind, 4, [None, pa.py_buffer(bytes(data))])
        try:
            column.validate(full=True)
        except pa.ArrowInvalid:
            continue  # not valid Arrow (a time past midnight): the upload check's, tested elsewhere
        try:
            assert len(bind(conn, column, "SELECT ? AS v, typeof(?) AS t")) == 4
        except adbc_driver_manager.ProgrammingError as e:
            assert "INVALID_ARGUMENT" in str(e) and "parameter 1" in str(e)


def test_typed_values_count_as_the_objects_they_become(conn):
    """A typed value (BIGINT, here) is a duckdb.Value beside its int, counted: 3,000 rows of four
    BIGINTs pass the 2 MiB a statement's values may hold (2.8 MB; 1.6 MB as bare ints)."""
    def four(rows: int) -> pa.RecordBatch:
        column = pa.array(range(3_000_000_000, 3_000_000_000 + rows), pa.int64())
        return pa.record_batch([column] * 4, names=["a", "b", "c", "d"])

    with conn.cursor() as cur:
        cur.execute("SELECT ? AS a, ? AS b, ? AS c, ? AS d", four(1_000))
        assert cur.fetch_arrow_table().num_rows == 1_000
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="at most 2,097,152 bytes"):
            cur.execute("SELECT ? AS a, ? AS b, ? AS c, ? AS d", four(3_000))


def test_named_placeholders_take_values_by_position_as_the_parameter_schema_lists_them(conn):
    """`$a` had prepared, then every bind failed: DuckDB binds a list of values to numbers only."""
    with conn.cursor() as cur:
        assert cur.adbc_prepare("SELECT $x AS v, $y AS w, $x + 1 AS u").names == ["x", "y"]
        cur.execute("SELECT $x AS v, $y AS w, $x + 1 AS u", (4, 5))
        assert cur.fetchall() == [(4, 5, 5)]
        with pytest.raises(adbc_driver_manager.ProgrammingError, match=r"INVALID_ARGUMENT.*2 placeholders \(\$x, \$y\); 3"):
            cur.execute("SELECT $x AS v, $y AS w", (4, 5, 6))
