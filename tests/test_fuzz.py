"""Hostile input: generated texts, series and SQL (hypothesis) thrown at the operators, the planner and
a real server. Nothing may crash: every answer is a valid result or one of our clear errors.

The runs are deterministic (derandomize, no example database), so CI sees the same examples every
time; FUZZ_EXAMPLES counts them for the README.
"""
from __future__ import annotations

import glob
import math
from collections import Counter

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import sqlglot
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import udfs
from conftest import REVIEWS, exchanged, run
from flight_lstm.errors import FlightLSTMError
from flight_lstm.models.text import MAX_CHARS
from flight_lstm.plan import Catalog
from flight_lstm.plan.read_only import check_read_only
from udfs import forecast, forecast_interval, sentiment, sentiment_label

FUZZ_EXAMPLES = {"texts": 60, "series": 60, "sql_planner": 300, "sql_server": 60, "bytes_server": 25}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # hundreds of small model calls


def fuzz(what: str):
    return settings(max_examples=FUZZ_EXAMPLES[what], derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ---------------------------------------------------------------- texts

WORDS = ["good", "bad", "film", "isn't", "-lrb-", "great", "awful", "...", "!", "\\", "'s", "😍", "n't", "--"]
TEXTS = st.one_of(
    st.none(),
    st.text(max_size=200),  # any code point but lone surrogates: controls, NUL, bidi marks, emoji
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Mn"]), max_size=40),
    st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join),
)


@fuzz("texts")
@given(st.lists(TEXTS, max_size=40))
def test_sentiment_of_any_texts_is_a_score_or_null(texts):
    array = pa.array(texts, pa.string())
    scores, labels = sentiment(array).to_pylist(), sentiment_label(array).to_pylist()
    assert len(scores) == len(labels) == len(texts)
    for text, score, label in zip(texts, scores, labels):
        if text is None or not text.strip(" \t\n\r"):
            assert score is None  # NULL, empty and blank texts give NULL
        elif any(c.isalnum() for c in text):
            assert score is not None  # a word is always scored
        assert score is None or (math.isfinite(score) and -1 <= score <= 1)
        assert (label is None) == (score is None) and label in (None, "negative", "neutral", "positive")
        assert label != "positive" or score > 0
        assert label != "negative" or score < 0


def test_a_10_mb_text_is_scored_on_its_first_20000_characters():
    head = "a dull , lifeless film \x00\x07\u202e 😍 isn't it ? "
    text = (head * (10_000_000 // len(head) + 1))[:10_000_000]
    scores = sentiment(pa.array([text, text[:MAX_CHARS], None])).to_pylist()
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and -1 <= scores[0] <= 1
    assert scores[2] is None


def test_invalid_utf8_in_a_string_array_is_a_clear_error():
    # Arrow strings must be UTF-8; an array built from raw buffers skips that check.
    data = b"\xff\xfe good" + b"ok" + "\udce9".encode("utf-8", "surrogateescape")
    offsets = np.array([0, 7, 9, len(data)], np.int32).tobytes()
    array = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    with pytest.raises(pa.ArrowInvalid, match="UTF8"):
        sentiment(array)


# ---------------------------------------------------------------- series

VALUES = st.one_of(
    st.floats(),  # NaN, ±inf, subnormals, ±1.8e308
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, -0.0, 1e300, -1e300, 1e-300, 1.7976931348623157e308, 5e-324]),
    st.none(),
)
SERIES = st.one_of(
    st.none(),
    st.lists(VALUES, max_size=60),
    st.tuples(st.floats(-1e12, 1e12), st.integers(1, 400)).map(lambda c: [c[0]] * c[1]),  # constants
    st.lists(st.floats(-1e3, 1e3), min_size=300, max_size=400),  # longer than the model's window
)


def _usable(series) -> bool:
    return series is not None and any(v is not None and math.isfinite(v) for v in series)


@fuzz("series")
@given(st.lists(SERIES, min_size=1, max_size=6), st.integers(1, 60),
       st.one_of(st.floats(0.001, 0.999), st.sampled_from([0.5, 0.95, 0.999999])))
def test_forecasts_of_any_series_are_finite_or_null(series, horizon, level):
    array = pa.array(series, pa.list_(pa.float64()))
    points = forecast(array, horizon).to_pylist()
    intervals = forecast_interval(array, horizon, level).to_pylist()
    assert len(points) == len(intervals) == len(series)
    for values, point, interval in zip(series, points, intervals):
        if not _usable(values):  # NULL, empty, or nothing finite in it
            assert point is None and interval is None
            continue
        assert len(point) == horizon and all(math.isfinite(v) for v in point)
        assert [p["step"] for p in interval] == list(range(1, horizon + 1))
        for p in interval:  # bounds may be NULL where the series cannot support them (all zero)
            assert math.isfinite(p["mean"])
            if p["lo"] is not None or p["hi"] is not None:
                assert all(math.isfinite(p[k]) for k in ("lo", "hi"))
                assert p["lo"] <= p["mean"] <= p["hi"]
        np.testing.assert_allclose([p["mean"] for p in interval], point, rtol=1e-9)


@pytest.mark.parametrize("horizon, level, words", [  # test_udfs.py has the other impossible horizons
    (8761, 0.9, "horizon"), (3, 0.0, "level"), (3, 1.0, "level"), (3, float("nan"), "level"), (3, float("inf"), "level"),
])
def test_impossible_parameters_are_errors_naming_them(horizon, level, words):
    with pytest.raises(ValueError, match=f"^{words} (must be|8761 is more than)"):
        forecast_interval(pa.array([[1.0, 2.0, 3.0]]), horizon, level)


# ---------------------------------------------------------------- SQL

STATEMENTS = [
    "COPY reviews TO '/tmp/flight-lstm-fuzz.csv'", "ATTACH '/tmp/flight-lstm-fuzz.db' AS x", "DETACH lake",
    "PRAGMA database_list", "SET threads = 1", "RESET threads", "INSTALL httpfs", "LOAD httpfs",
    "CALL pragma_version()", "EXPORT DATABASE '/tmp/flight-lstm-fuzz'", "CREATE MACRO m(a) AS a",
    "DROP TABLE reviews", "DELETE FROM reviews", "USE memory", "CHECKPOINT", "BEGIN", "VACUUM",
]
SAFE_FROM = ["reviews", "sales", "scored", "main.scored", "range(3)", "generate_series(1, 3)", "unnest([1, 2])",
             "lake.main.reviews", "forecast_table('sales', key => 'store', ts => 'ts', value => 'amount', horizon => 2)"]
ESCAPE_FROM = [
    "read_csv('/etc/passwd')", "read_text('/etc/hostname')", "read_blob('/etc/hostname')", "glob('/*')",
    "'/etc/passwd'", "'data.csv'", "read_parquet('x.parquet')", "sniff_csv('/etc/passwd')", "duckdb_settings()",
    "query('SELECT 1')", "(SELECT * FROM read_csv('/etc/passwd'))",
]
SAFE_EXPRESSIONS = [
    "*", "id", "review", "1", "'x'", "NULL", "sentiment(review)", "sentiment_label(review)",
    "sentiment(review, 'sst2-bilstm')", "forecast([1.0, 2.0, 3.0], 2)", "forecast(list(amount ORDER BY ts), 3)",
    "forecast_interval([1.0, 'nan'::DOUBLE], 2, 0.9)", "length(review)", "count(*)", "[1, 2]", "$$x$$",
    "E'\\x00'", "chr(0)", "'\u202e'", "CAST(from_hex('fffe') AS VARCHAR)", "sentiment(CAST(id AS VARCHAR))",
    "id + 1", "review || '!'",
]
ESCAPE_EXPRESSIONS = ["getenv('HOME')", "current_setting('threads')", "sentiment(review, 'nope@9')",
                      "(SELECT count(*) FROM read_csv('/etc/passwd'))", "load_extension('httpfs')"]
SUFFIXES = ["", ";", " ;", " -- trailing", " /* ; DROP TABLE reviews */", "; -- trailing", "; /* end */"]
HIDDEN = ["; {}", " -- \n; {}", " /* x */; {}", " /* */ ; /* */ {}", ";\n{}"]
TOKENS = ["SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "WITH", "AS", "(", ")", ",", ";", "'",
          '"', "/*", "*/", "--", "\n", "UNION ALL", "JOIN", "ON", "LATERAL", "..", "::", "$1", "?", "\\", "\x00",
          *SAFE_FROM[:7], *ESCAPE_FROM[:5], *SAFE_EXPRESSIONS[:12], *ESCAPE_EXPRESSIONS[:3], *STATEMENTS[:8]]


def _mostly_safe(safe: list[str], escapes: list[str]):
    """Three times in four a harmless piece, so that a good share of the queries can run."""
    return st.one_of(st.sampled_from(safe), st.sampled_from(safe), st.sampled_from(safe), st.sampled_from(escapes))


@st.composite
def select(draw, escapes: bool = True) -> str:
    expression = _mostly_safe(SAFE_EXPRESSIONS, ESCAPE_EXPRESSIONS) if escapes else st.sampled_from(SAFE_EXPRESSIONS)
    sql = f"SELECT {', '.join(draw(st.lists(expression, min_size=1, max_size=3)))}"
    if not escapes or draw(st.booleans()):
        sql += f" FROM {draw(_mostly_safe(SAFE_FROM, ESCAPE_FROM) if escapes else st.sampled_from(SAFE_FROM))}"
        if draw(st.booleans()):
            sql += f" WHERE {draw(expression)} = {draw(expression)}"
        if draw(st.booleans()):
            sql += f" GROUP BY {draw(st.sampled_from(['id', 'review', '1', 'ALL']))}"
        if draw(st.booleans()):
            sql += f" LIMIT {draw(st.integers(0, 5))}"
    if draw(st.booleans()):
        sql = f"WITH x AS ({sql}) SELECT * FROM x"
    if escapes and draw(st.integers(0, 3)) == 0:
        return sql + draw(st.sampled_from(HIDDEN)).format(draw(st.sampled_from(STATEMENTS)))
    return sql + draw(st.sampled_from(SUFFIXES))


SQL = st.one_of(
    select(),
    select(),
    st.sampled_from(STATEMENTS),
    st.lists(st.sampled_from(TOKENS), max_size=16).map(" ".join),
    st.text(max_size=60),
)


def _catalogs() -> list[Catalog]:
    local = Catalog(operators=udfs.OPERATORS)
    pushdown = Catalog(operators=udfs.OPERATORS, pushdown_dialect="dremio",
                       columns_of=lambda table: ["id", "review", "store", "ts", "amount"])
    for c in (local, pushdown):
        c.add_view("scored", "SELECT id, review, sentiment(review) AS score FROM reviews")
    return [local, pushdown]


CATALOGS = _catalogs()
PARSER = duckdb.connect()  # DuckDB's own parser, for what the planner hands on


def _still_read_only(sql: str, dialect: str) -> None:
    """What the planner hands on must pass the read-only check again (garbage may fail to parse)."""
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return
    check_read_only(tree)


def test_the_planner_returns_a_safe_plan_or_our_error():
    seen = Counter()

    @fuzz("sql_planner")
    @given(SQL)
    @example("SELECT lateral ..")  # each of these once crashed a planner step
    @example("s.f.reviews PRAGMA UNION ALL SELECT")
    @example("SELECT forecast(list(amount ORDER BY ts), 3) GROUP BY review")
    @example("SELECT " + "(" * 80 + "1" + ")" * 80)
    def barrage(sql):
        for catalog in CATALOGS:
            try:
                plan = catalog.plan(sql)
            except FlightLSTMError as e:
                seen[type(e).__name__] += 1
                continue
            seen["planned"] += 1
            _still_read_only(plan.sql, "duckdb")
            for _, scan in plan.scans:
                _still_read_only(scan, "dremio")
            try:
                statements = PARSER.extract_statements(plan.sql)
            except duckdb.Error:
                continue  # not SQL to DuckDB either: the engine reports the syntax error
            assert [s.type for s in statements] == [duckdb.StatementType.SELECT]

    barrage()
    print("generated SQL in the planner:", dict(seen))
    assert seen["planned"] and seen["QueryRefused"] and seen["InvalidQuery"]  # the generator reaches all three


def _answer(client, sql: str) -> pa.Table | flight.FlightError | pa.ArrowInvalid:
    try:
        return run(client, sql)
    except (flight.FlightError, pa.ArrowInvalid) as e:  # a bad query is INVALID_ARGUMENT
        return e


def _clear(error: flight.FlightError | pa.ArrowInvalid) -> bool:
    """One of our statuses with a one-line message: not INTERNAL, no traceback."""
    return not isinstance(error, flight.FlightInternalError) and "Traceback" not in str(error)


def test_a_server_under_generated_sql_answers_each_and_keeps_serving(server):
    with flight.connect(server) as client:
        answers = Counter()

        @fuzz("sql_server")
        @given(st.one_of(select(escapes=False), SQL))  # more that can run: a server answers with data too
        def barrage(sql):
            answer = _answer(client, sql)
            answers[type(answer).__name__] += 1
            assert isinstance(answer, pa.Table) or _clear(answer), f"{sql!r}: {answer}"

        barrage()
        print("generated SQL over Flight:", dict(answers))
        assert answers["Table"] and answers["FlightUnauthorizedError"] and answers["ArrowInvalid"]
        table = run(client, "SELECT count(*) AS n, count(review) AS texts FROM reviews")
        assert table.to_pylist() == [{"n": len(REVIEWS), "texts": sum(r is not None for r in REVIEWS)}]


@pytest.mark.parametrize("sql", [
    # An operator failing after the first batches went out: still our clear error, naming the cause.
    "SELECT forecast([1.0, 2.0], CASE WHEN i < 30000 THEN 3 ELSE 0 END) AS f FROM range(60000) t(i)",
    "SELECT CASE WHEN i < 30000 THEN i ELSE error('boom at 30000') END AS x FROM range(60000) t(i)",
])
def test_an_error_mid_stream_is_a_clear_error(server, sql):
    with flight.connect(server) as client:
        with pytest.raises(pa.ArrowInvalid, match="horizon|boom") as caught:
            client.do_get(flight.Ticket(sql.encode())).read_all()
        assert _clear(caught.value)
        assert run(client, "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'reviews.csv'",
    "SELECT (SELECT count(*) FROM read_csv('/etc/passwd')) AS n",
    "SELECT * FROM range(1) t, LATERAL (SELECT * FROM read_csv_auto('/etc/passwd'))",
    "COPY reviews TO '/tmp/flight-lstm-escape.csv'",
    "COPY (SELECT * FROM reviews) TO '/tmp/flight-lstm-escape.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '/tmp/flight-lstm-escape'",
    "ATTACH '/tmp/flight-lstm-escape.db' AS x",
    "ATTACH ':memory:' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL httpfs",
    "SELECT load_extension('httpfs')",
    "SET enable_external_access = true",
    "SET GLOBAL lock_configuration = false",
    "RESET allowed_paths",
    "PRAGMA enable_profiling",
    "SELECT 1; DROP TABLE reviews",
    "SELECT 1 -- \n; DROP TABLE reviews",
    "SELECT 1 /* x */; DROP TABLE reviews",
    "/* SELECT 1; */ DROP TABLE reviews",
    "CALL pragma_version()",
    "CREATE MACRO leak(a) AS getenv(a)",
    "CREATE TEMP TABLE t AS SELECT * FROM reviews",
    "SELECT getenv('HOME')",
    "SELECT current_setting('s3_secret_access_key')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * INTO copied FROM reviews",
    "DETACH lake",
    "USE memory",
])
def test_sandbox_escapes_are_refused_over_the_wire(server, sql):
    with flight.connect(server) as client:
        with pytest.raises((flight.FlightUnauthorizedError, pa.ArrowInvalid)) as caught:
            run(client, sql)
        if isinstance(caught.value, pa.ArrowInvalid):  # what cannot even be parsed
            assert "syntax error" in str(caught.value)
        assert run(client, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == len(REVIEWS)
    assert not glob.glob("/tmp/flight-lstm-escape*")


def test_a_comment_cannot_hide_a_second_statement_over_the_wire(server):
    with flight.connect(server) as client:
        hidden = run(client, "SELECT count(*) AS n FROM reviews /* ; DROP TABLE reviews */")
        assert hidden.column("n")[0].as_py() == len(REVIEWS)
        assert run(client, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == len(REVIEWS)


# ---------------------------------------------------------------- bytes a client sends

BYTES = st.one_of(
    st.none(),
    st.binary(max_size=40),  # mostly invalid UTF-8
    st.text(alphabet=st.characters(categories=["Cs", "Lu", "Ll", "Cc"]), max_size=20)
      .map(lambda t: t.encode("utf-8", "surrogatepass")),  # lone surrogates, as surrogatepass writes them
    st.text(max_size=20).map(lambda t: t.encode("utf-8")),
)


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_any_bytes_sent_to_be_scored_give_scores_or_a_clear_error(server):
    with flight.connect(server) as client:
        @fuzz("bytes_server")
        @given(st.lists(BYTES, min_size=1, max_size=8))
        def barrage(values):
            table = pa.table({"t": pa.array(values, pa.binary())})
            # A cast to VARCHAR escapes bytes that are not UTF-8: always scored.
            cast = exchanged(client, "SELECT sentiment(CAST(t AS VARCHAR)) AS s FROM input", table)
            scores = cast.column("s").to_pylist()
            assert len(scores) == len(values)
            assert all(s is None or -1 <= s <= 1 for s in scores)
            assert all(s is None for v, s in zip(values, scores) if v is None)
            # decode() insists on UTF-8: scores if every value is, else one clear error.
            try:
                decoded = exchanged(client, "SELECT sentiment(decode(t)) AS s FROM input", table)
                assert all(_utf8(v) for v in values if v is not None)
                assert decoded.num_rows == len(values)
            except pa.ArrowInvalid as e:
                assert "UTF8" in str(e) and not all(_utf8(v) for v in values if v is not None)

        barrage()


def test_invalid_utf8_sent_as_a_string_column_is_a_clear_error(server):
    data = b"\xff\xfe good" + b"ok" + "\udce9".encode("utf-8", "surrogateescape")
    offsets = np.array([0, 7, 9, len(data)], np.int32).tobytes()
    strings = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    with flight.connect(server) as client:
        with pytest.raises(pa.ArrowInvalid, match="UTF8") as caught:
            exchanged(client, "SELECT sentiment(t) AS s FROM input", pa.table({"t": strings}))
        assert _clear(caught.value)
        assert run(client, "SELECT 41 + 1 AS x").column("x")[0].as_py() == 42
