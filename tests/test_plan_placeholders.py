"""Bound values reach the placeholders the user wrote them for.

The planner runs the SQL sqlglot writes from its tree, and the writer moves, repeats and drops
arguments (`position(? IN ?)` is written `STRPOS(?, ?)`, arguments swapped). DuckDB numbers an
anonymous `?` by where it stands in the text it runs, so each `?` is numbered `$1 .. $n` at
parse, in the order written, and the written text must hold exactly the tree's placeholders
(plan/parse.py, plan/emit.py). Every answer here is the one DuckDB gives for the user's own text.
"""
import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
import pyarrow as pa
import pytest

from flight_lstm.errors import InvalidQuery, QueryRefused
from flight_lstm.plan.parse import parse_one_query
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

# (the user's SQL, the values bound, in the order of the placeholders as written)
SAME_AS_DUCKDB = [
    ("SELECT position(? IN ?) AS p", ("b", "abc")),  # written STRPOS(?, ?): arguments swapped
    ("SELECT trim(? FROM ?) AS t", ("x", "xxaxx")),  # written TRIM(?, ?)
    ("SELECT range AS r FROM range(100) ORDER BY range OFFSET ? LIMIT ?", (15, 2)),  # LIMIT first
    ("FROM range(?) SELECT ? AS tag, range ORDER BY range", (3, "x")),  # written SELECT-first
    ("SELECT percentile_cont(?) WITHIN GROUP (ORDER BY ?) AS p", (0.5, 7)),  # the ? written twice
    ("SELECT percentile_cont(?) WITHIN GROUP (ORDER BY x) AS p FROM (VALUES (1), (2), (3), (10)) t(x)", (0.25,)),
    ("SELECT date_diff('day', ?::date, ?::date) AS dd", ("2024-01-01", "2024-03-01")),  # `?::` one token
    ("SELECT extract(year FROM ?::date) AS y", ("2024-05-06",)),
    ("SELECT ? || ? AS s, ? - ? AS d", ("a", "b", 10, 3)),
    ("WITH t AS (SELECT ? AS a) SELECT ? AS b, a FROM t", (1, 2)),
    ("SELECT $2 - $1 AS d, $1 AS a", (3, 10)),  # numbered placeholders, one used twice
    ("SELECT '?' AS q, ? /* ? */ AS a, $$?$$ AS h, ? AS b -- ?", (5, 6)),  # a `?` in text is no placeholder
]


@pytest.fixture(scope="module")
def service(lake):
    service = Service(DuckDBSource(lake))
    yield service
    service.close()


def served(service: Service, sql: str, params) -> list[tuple]:
    plan = service.plan(sql)
    schema, batches = service.stream(plan, params=list(params))
    return [tuple(row.values()) for row in pa.Table.from_batches(list(batches), schema).to_pylist()]


def direct(sql: str, params) -> list[tuple]:
    with duckdb.connect() as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.mark.parametrize(("sql", "params"), SAME_AS_DUCKDB)
def test_each_value_binds_to_the_placeholder_it_was_written_for(service, sql, params):
    assert served(service, sql, params) == direct(sql, params)
    # What a prepared statement announces: one parameter per value the client binds.
    assert service.parameters(service.plan(sql)) == [str(n) for n in range(1, len(params) + 1)]


def test_the_examples_answer_as_duckdb_does(service):
    assert served(service, "SELECT position(? IN ?) AS p", ("b", "abc")) == [(2,)]
    assert served(service, "SELECT range AS r FROM range(100) ORDER BY range OFFSET ? LIMIT ?", (15, 2)) \
        == [(15,), (16,)]


def test_placeholders_are_numbered_in_the_order_written():
    tree = parse_one_query("FROM range(?) SELECT ? AS tag, position(? IN ?) AS p")
    assert tree.sql("duckdb") == "SELECT $2 AS tag, STRPOS($4, $3) AS p FROM RANGE(0, $1)"


def test_between_symmetric_binds_each_bound_once(service):
    # DuckDB's own parser has no BETWEEN SYMMETRIC; sqlglot writes it as two BETWEENs, repeating
    # every operand: each must still take the value bound for it, and the query takes 3 values.
    sql = "SELECT ? BETWEEN SYMMETRIC ? AND ? AS b"
    plan = service.plan(sql)
    assert service.parameters(plan) == ["1", "2", "3"]
    same = "SELECT $1 BETWEEN least($2, $3) AND greatest($2, $3) AS b"
    for params in [(5, 7, 1), (5, 1, 7), (5, 1, 3), (0, 3, 1), (2, 2, 2)]:
        assert served(service, sql, params) == direct(same, params)


def test_a_placeholder_the_writer_drops_is_refused(service):
    # sqlglot drops regexp_replace's fourth argument when it is not a literal: the query would
    # take three values for four placeholders.
    sql = "SELECT regexp_replace(?, ?, ?, ?) AS r"
    assert direct(sql, ("aAa", "a", "b", "gi")) == [("bbb",)]
    with pytest.raises(QueryRefused, match=r"placeholders.*drops \$4"):
        service.plan(sql)


def test_mixing_anonymous_and_numbered_placeholders_is_refused(service):
    for sql in ("SELECT ? + $1 AS x", "SELECT $1 + ? AS x", "SELECT $name AS n, ? AS x"):
        with pytest.raises(InvalidQuery, match=r"one kind of placeholder"):
            service.plan(sql)


def test_named_placeholders_keep_their_names(service):
    plan = service.plan("SELECT $x AS v, $y AS w, $x + 1 AS u")
    assert service.parameters(plan) == ["x", "y"]
    schema, batches = service.stream(plan, params={"x": 4, "y": 5})
    assert pa.Table.from_batches(list(batches), schema).to_pylist() == [{"v": 4, "w": 5, "u": 5}]


def test_a_view_holding_a_placeholder_is_refused(lake):
    # A view's `?` would be numbered apart from the query's own, and both bound to `$1`.
    with pytest.raises(InvalidQuery, match="placeholder"):
        Service(DuckDBSource(lake), views={"v": "SELECT id FROM reviews WHERE id > ?"})


def test_prepared_statements_through_a_flight_sql_client(server):
    with flight_sql.connect(server) as conn, conn.cursor() as cur:
        parameters = cur.adbc_prepare("FROM range(?) SELECT ? AS tag, position(? IN ?) AS p")
        assert parameters.names == ["1", "2", "3", "4"]
        cur.execute("FROM range(?) SELECT ? AS tag, position(? IN ?) AS p", (2, "t", "b", "abc"))
        assert cur.fetchall() == [("t", 2), ("t", 2)]
        cur.execute("SELECT range AS r FROM range(100) ORDER BY range OFFSET ? LIMIT ?", (15, 2))
        assert cur.fetchall() == [(15,), (16,)]
        assert cur.adbc_prepare("SELECT ? BETWEEN SYMMETRIC ? AND ? AS b").names == ["1", "2", "3"]


@pytest.mark.parametrize("sql", ["SELECT date_diff('day', ?) AS dd", "SELECT strpos(review) AS p FROM reviews",
                                 "SELECT left(?) AS l", "SELECT round() AS r"])
def test_syntax_errors_name_no_sqlglot_internals(service, sql):
    # DuckDB's parser takes these (its binder would refuse them): the message is sqlglot's, and
    # named `<class 'sqlglot.expressions.temporal.DateDiff'>`.
    with pytest.raises(InvalidQuery, match=r"^syntax error: .* missing in [A-Z]+ at line 1, column \d+$") as caught:
        service.plan(sql)
    assert "<class" not in str(caught.value) and "sqlglot" not in str(caught.value)
