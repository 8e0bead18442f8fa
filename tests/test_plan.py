"""The planner: one read-only SELECT in, rewritten DuckDB SQL out, refusals with clear reasons."""
import pytest

import udfs
from flight_lstm.errors import InvalidQuery, QueryRefused
from flight_lstm.plan import Catalog


@pytest.fixture
def catalog():
    def resolve_model(kind, ref):
        if ref is not None and ref.split("@")[0] != "known":
            raise InvalidQuery(f"unknown {kind} model {ref}")
        return ref

    c = Catalog(operators=udfs.OPERATORS, resolve_model=resolve_model)
    c.add_view("scored", "SELECT id, sentiment(review) AS s FROM reviews")
    return c


@pytest.mark.parametrize("sql", [
    "DROP TABLE reviews",
    "DELETE FROM reviews",
    "INSERT INTO reviews VALUES (1, 'x')",
    "UPDATE reviews SET review = ''",
    "CREATE TABLE t AS SELECT 1",
    "COPY reviews TO '/tmp/out.csv'",
    "ATTACH '/tmp/other.db'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET threads = 1",
    "PRAGMA database_list",
    "SELECT 1; SELECT 2",
    "SELECT 1; DROP TABLE reviews",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT getenv('HOME')",
    "WITH x AS (SELECT * FROM read_csv_auto('/etc/passwd')) SELECT * FROM x",
    "SELECT * FROM (SELECT * FROM parquet_scan('/tmp/x.parquet'))",
    "USE memory",
    "DESCRIBE reviews",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM 'reviews.csv'",
    "SELECT * FROM \"s3://bucket/reviews.parquet\"",
    "SELECT 1 -- \n; DROP TABLE reviews",
    "/* SELECT 1; */ DROP TABLE reviews",
    "CALL pragma_version()",
    "CREATE MACRO leak(a) AS getenv(a)",
    "SELECT current_setting('s3_secret_access_key')",
    "SELECT load_extension('httpfs')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * INTO copied FROM reviews",
])
def test_refuses_anything_but_one_read_only_query(catalog, sql):
    with pytest.raises(QueryRefused):
        catalog.plan(sql)


def test_comment_cannot_hide_a_second_statement(catalog):
    plan = catalog.plan("SELECT 1 /* ; DROP TABLE reviews */")
    assert "DROP" not in plan.sql.split("/*")[0]


@pytest.mark.parametrize("sql", ["SELECT 1 AS one; -- done", "SELECT 1 AS one; /* end */", "SELECT 1 AS one;\n-- a\n-- b\n"])
def test_a_comment_after_the_last_semicolon_is_no_statement(catalog, sql):
    assert catalog.plan(sql).sql.startswith("SELECT 1 AS one")


@pytest.mark.parametrize("sql", ["SELECT 1; -- done\n; DROP TABLE reviews", "SELECT 1; /* x */ SELECT 2"])
def test_a_statement_after_a_comment_still_counts(catalog, sql):
    with pytest.raises(QueryRefused, match="exactly one statement"):
        catalog.plan(sql)


def test_a_cte_may_have_a_file_like_name(catalog):
    assert catalog.plan('WITH "x.csv" AS (SELECT 1 AS a) SELECT a FROM "x.csv"').tables == ()


@pytest.mark.parametrize("sql", ["", "   ", "SELEC 1", "SELECT FROM WHERE", "SELECT (1", "SELECT lateral ..",
                                 "SELECT " + "(" * 100 + "1" + ")" * 100, "EXPORT DATABASE '/tmp/x'"])
def test_bad_sql_is_an_invalid_query(catalog, sql):
    with pytest.raises(InvalidQuery):
        catalog.plan(sql)


def test_model_argument_routes_to_internal_name(catalog):
    plan = catalog.plan("SELECT sentiment(review, 'known@1') FROM reviews")
    assert "sentiment__with_model" in plan.sql.lower()
    assert plan.tables == ("reviews",)


def test_unknown_model_and_bad_model_argument(catalog):
    with pytest.raises(InvalidQuery, match="unknown sentiment model"):
        catalog.plan("SELECT sentiment(review, 'nope') FROM reviews")
    with pytest.raises(InvalidQuery, match="string literal"):
        catalog.plan("SELECT sentiment(review, review) FROM reviews")
    with pytest.raises(InvalidQuery, match="takes 2 argument"):
        catalog.plan("SELECT forecast([1.0, 2.0]) FROM reviews")
    with pytest.raises(InvalidQuery, match="unknown function"):
        catalog.plan("SELECT sentiment__with_model(review, 'known') FROM reviews")


def test_views_inline_as_ctes_and_user_ctes_win(catalog):
    plan = catalog.plan("SELECT * FROM scored WHERE s > 0")
    assert plan.sql.startswith("WITH scored AS")
    assert plan.tables == ("reviews",)
    assert "sentiment" in plan.operators
    shadowed = catalog.plan("WITH scored AS (SELECT 1 AS s) SELECT * FROM scored")
    assert "reviews" not in shadowed.sql


def test_view_may_build_on_an_earlier_view(catalog):
    catalog.add_view("positive", "SELECT * FROM scored WHERE s > 0")
    plan = catalog.plan("SELECT count(*) FROM positive")
    assert plan.tables == ("reviews",)
    assert plan.sql.lower().count("sentiment(") == 1


def test_a_view_must_itself_be_safe(catalog):
    with pytest.raises(QueryRefused):
        catalog.add_view("bad", "SELECT * FROM read_csv('/etc/passwd')")


def test_a_view_may_be_named_with_schema_main(catalog):
    plan = catalog.plan("SELECT * FROM main.scored")
    assert plan.sql.startswith("WITH scored AS") and plan.tables == ("reviews",)
    plan = catalog.plan("SELECT main.scored.id, scored.s FROM main.scored")  # as SQLAlchemy writes it
    assert "main.scored.id" not in plan.sql and "scored.id" in plan.sql


@pytest.mark.parametrize("sql", [
    "SELECT forecast(list(amount), 2) FROM sales",
    "SELECT store, forecast_interval(array_agg(amount), 2, 0.9) FROM sales GROUP BY store",
    "SELECT forecast(list(amount) FILTER (WHERE amount > 0), 2) FROM sales",
    "SELECT anomaly_scores(list(amount), 0.99, 0) FROM sales",
    "SELECT forecast(list(amount), 2, 'known') FROM sales",
])
def test_a_series_aggregated_in_no_order_is_refused_with_the_fix(catalog, sql):
    with pytest.raises(InvalidQuery, match=r"needs its points in time order: write list\(amount ORDER BY ts\)"):
        catalog.plan(sql)


@pytest.mark.parametrize("sql", [
    "SELECT forecast(list(amount ORDER BY ts), 2) FROM sales",
    "SELECT forecast(list(amount) OVER (PARTITION BY store ORDER BY ts), 2) FROM sales",
    "SELECT forecast(history, 2) FROM series",  # a list column: its order is its writer's
    "SELECT forecast([1.0, 2.0, 3.0], 2)",
])
def test_a_series_in_a_defined_order_is_taken(catalog, sql):
    assert catalog.plan(sql).operators == {"forecast"}


def test_each_model_is_resolved_once_per_query():
    """Resolving a model reads the model cards: once per call made 2,000 calls take 3 s to plan."""
    asked = []

    def resolve_model(kind, ref):
        asked.append((kind, ref))
        return ref

    catalog = Catalog(operators=udfs.OPERATORS, resolve_model=resolve_model)
    columns = ", ".join(["sentiment(review)", "sentiment(review, 'known@1')", "sentiment_label(review)"] * 200)
    plan = catalog.plan(f"SELECT {columns} FROM reviews")
    # once when the named model is checked, then once per distinct model the plan names
    assert len(asked) == 3 and set(asked) == {("sentiment", None), ("sentiment", "known@1")}
    assert plan.models == {"known@1"}


def test_query_text_is_bounded_in_bytes_not_characters(catalog):
    from flight_lstm.plan.parse import MAX_SQL_BYTES

    ascii_text = f"SELECT '{'x' * (MAX_SQL_BYTES // 2)}' AS x"
    assert catalog.plan(ascii_text)  # half the bound: planned
    with pytest.raises(InvalidQuery, match="over"):  # as many characters, each of 4 bytes
        catalog.plan(f"SELECT '{chr(0x1F600) * (MAX_SQL_BYTES // 2)}' AS x")


def test_query_text_is_bounded_in_tokens_before_sqlglot_reads_it(catalog):
    """256 KiB of one-character tokens took sqlglot 4 s to read before the planned tree's bound
    refused it; DuckDB's tokenizer counts them first."""
    from flight_lstm.plan.parse import MAX_TOKENS

    with pytest.raises(InvalidQuery, match=f"more than {MAX_TOKENS:,}; split it"):
        catalog.plan("SELECT 1 IN (" + ",".join(["1"] * (MAX_TOKENS // 2 + 1)) + ")")
    assert catalog.plan("SELECT 1 IN (" + ",".join(["1"] * 5_000) + ") AS x")  # 10,000 tokens: planned


@pytest.mark.parametrize("sql", [
    "SELECT CASE '" + "x" * 65536 + "' " + " ".join(f"WHEN 'a{i}' THEN {i}" for i in range(100)) + " END",
    "SELECT " + "CASE (" * 16 + "1" + ") WHEN 1 THEN 1 WHEN 2 THEN 2 END" * 16,
])
def test_a_simple_case_counts_its_operand_once_per_when(catalog, sql):
    """DuckDB copies a simple CASE's operand into each WHEN: 2,000 WHENs over a 64 KiB literal had
    planned to 131 MB of SQL (14 s, 2.4 GB), and 16 nested CASEs of two WHENs make 2^16 copies."""
    with pytest.raises(InvalidQuery, match="simple CASE's operand is copied"):
        catalog.plan(sql)
