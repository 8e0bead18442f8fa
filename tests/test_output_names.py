"""A column without an alias is named as DuckDB names it, from the text the user wrote, though the
planner runs the text sqlglot writes (`list(x)` as `array_agg(x)`, `x::VARCHAR` as a cast to TEXT)."""
import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import run, start_server
from flight_lstm.errors import InvalidQuery
from flight_lstm.plan.duckdb_check import column_name
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

# A name written in the SELECT that is a computed column's name: DuckDB binds it to the table's
# column (an alias would have taken it, and sorted by the other column).
COLLIDING = [
    'SELECT i + 1 FROM (SELECT id AS i, -id AS "(i + 1)" FROM reviews) ORDER BY "(i + 1)" LIMIT 3',
    'SELECT count(*) FROM (SELECT id % 2, count(*) FROM reviews GROUP BY ALL) GROUP BY "count_star()" '
    'ORDER BY "count_star()" DESC',
]
QUERIES = [
    "SELECT list(id), string_agg(review, ','), bool_and(id > 0), count(DISTINCT id) FROM reviews",
    "SELECT id::VARCHAR, CAST(id AS TEXT) AS t, id ** 2, pow(id, 3), substr(review, 1, 2), len(review) FROM reviews",
    "SELECT date_trunc('day', ts), strftime(ts, '%Y'), amount // 2, list(amount ORDER BY ts DESC) FROM sales "
    "GROUP BY ALL",
    "SELECT [id, 1], {'a': id}, CASE WHEN id > 1 THEN 'x' END, coalesce(review, '') FROM reviews",
    "SELECT * FROM (SELECT list(id), id::VARCHAR FROM reviews GROUP BY id) sub ORDER BY ALL LIMIT 3",
    'SELECT "list(id)" FROM (SELECT list(id) FROM reviews)',
    "WITH a AS (SELECT list(id) FROM reviews), b AS (SELECT * FROM a) SELECT * FROM b",
    "SELECT len(review) FROM reviews UNION ALL SELECT length(review) FROM reviews UNION ALL SELECT 1",
    "WITH a AS (SELECT 1) SELECT list(id) FROM reviews UNION ALL SELECT [1] UNION ALL SELECT [2]",
    "(SELECT id::VARCHAR FROM reviews EXCEPT SELECT '1') UNION SELECT len(review)::VARCHAR FROM reviews",
    "SELECT id ** 2 FROM reviews UNION ALL SELECT 1 UNION SELECT 2 INTERSECT SELECT 2",
    "WITH a AS (SELECT 2) SELECT id ** 2 FROM reviews UNION ALL SELECT 1 UNION SELECT * FROM a",
    "WITH RECURSIVE t AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT list(n), max(n) ** 2 FROM t",
    "SELECT r.id ** 2, s.amount::INT FROM reviews r JOIN (SELECT amount::DOUBLE AS amount FROM sales LIMIT 1) s "
    "ON true",
    "SELECT * EXCLUDE (review), id::VARCHAR FROM reviews",
    "SELECT count(*)::VARCHAR, (SELECT list(id) FROM (SELECT * FROM reviews)), [x::VARCHAR FOR x IN [1]] FROM reviews",
    *COLLIDING,
]


@pytest.fixture(scope="module")
def service(lake):
    return Service(DuckDBSource(lake))


@pytest.mark.parametrize("sql", QUERIES)
def test_columns_are_named_as_duckdb_names_the_text(service, lake, sql):
    with duckdb.connect(lake, read_only=True) as con:
        expected = con.sql(sql).to_arrow_table().schema.names
    assert service.schema(service.plan(sql)).names == expected
    if sql in COLLIDING:
        schema, batches = service.stream(service.plan(sql))
        with duckdb.connect(lake, read_only=True) as con:
            assert pa.Table.from_batches(list(batches), schema).to_pylist() == con.sql(sql).to_arrow_table().to_pylist()


def test_a_users_alias_named_as_a_computed_column_keeps_the_order_by(service, lake):
    sql = 'SELECT -i AS "(i + 1)", i + 1 FROM (SELECT id AS i FROM reviews) ORDER BY "(i + 1)" LIMIT 3'
    schema, batches = service.stream(service.plan(sql))
    with duckdb.connect(lake, read_only=True) as con:
        expected = con.sql(sql).fetchall()
    assert [tuple(r.values()) for r in pa.Table.from_batches(list(batches), schema).to_pylist()] == expected


@pytest.mark.parametrize("sql", ['SELECT id + 1 FROM reviews WHERE "(id + 1)" > 2',
                                 'SELECT id + 1, "(id + 1)" * 10 FROM reviews'])
def test_a_computed_columns_name_is_no_alias_in_its_own_select(service, sql):
    """DuckDB refuses these (no column of that name); an alias would have answered them."""
    with pytest.raises(InvalidQuery, match="not found"):
        service.stream(service.plan(sql))


def test_operator_columns_are_named_from_the_text_written_through_a_client(lake):
    """An operator call's column too: its arguments as written (`list(...)`, not sqlglot's
    `array_agg(...)`), through a real client."""
    calls = ["sentiment(any_value(review))", "forecast(list(amount ORDER BY ts), 3)"]
    srv, uri = start_server(Service(DuckDBSource(lake)))
    try:
        with flight.connect(uri) as client:
            got = run(client, f"SELECT store, {', '.join(calls)} FROM sales JOIN reviews ON true GROUP BY store")
        assert got.schema.names == ["store", *map(column_name, calls)]
        assert got.schema.names[2].startswith("forecast(list(amount ORDER BY ts")
    finally:
        srv.shutdown()


def test_names_count_against_no_bound_the_user_did_not_write(service):
    """The names are aliases the planner adds after its bounds counted the tree: a query of 4,000
    computed columns plans as it did (its aliases had taken it past 20,000 nodes)."""
    sql = "SELECT " + ", ".join(f"id + {i}" for i in range(4000)) + " FROM reviews"
    assert service.schema(service.plan(sql)).names[:2] == ["(id + 0)", "(id + 1)"]


def test_a_position_is_named_by_its_column_and_a_nul_leaves_names_alone(service):
    """`#1` is the column it stands for (it had been named `#1`); DuckDB's names end at a NUL, so
    a query holding one keeps the names it had (a cut name had landed on another column)."""
    assert service.schema(service.plan("SELECT #1, #2 FROM sales")).names == ["store", "ts"]
    sql = 'SELECT "(a + 1)" FROM (SELECT "a\x00b" + 1, a + 1 FROM (SELECT 1 AS "a\x00b", 5 AS a))'
    schema, batches = service.stream(service.plan(sql))
    assert [r for b in batches for r in b.column(0).to_pylist()] == [6]
