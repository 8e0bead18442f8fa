"""Hostile SQL from a real client: text the planner never approved must not reach DuckDB, the source
file must not change, and DuckDB's own catalog (paths, settings) stays out of reach."""

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import make_lake, run, start_server
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

# The probe's payload: a quoted EXTRACT part that sqlglot used to write back as raw SQL.
WRITE_THROUGH_EXCHANGE = (
    "SELECT extract(\"epoch FROM now()) AS a FROM input; SET VARIABLE p = lower('{path}'); "
    "ATTACH getvariable('p') AS w; DELETE FROM w.reviews WHERE id < 5; CREATE TABLE w.owned AS SELECT 1 --\""
    " FROM now()) FROM input"
)
SMUGGLED = [  # one statement each, hiding a call the planner would refuse
    "SELECT extract(\"epoch FROM now()) AS a, query('SELECT 6*7') AS b, extract(epoch\" FROM now())",
    "SELECT date_trunc('day'' , now()) AS a, current_setting(''allowed_paths'') AS b, date_trunc(''day', now())",
    "SELECT $\"a, current_setting('allowed_paths') AS b, $c\"",
    "SELECT \"query\"('SELECT 42')",
    "SELECT 1 /* */ , (SELECT * FROM read_blob('lake.db')) --",
    "SELECT * FROM \"query\"('SELECT 42')",
    "SELECT * FROM json_execute_serialized_sql('x')",
    "SELECT * FROM checkpoint()",
]
CATALOG = [
    "SELECT * FROM duckdb_databases", "SELECT * FROM duckdb_databases()", "SELECT * FROM pragma_database_list",
    "SELECT * FROM pg_settings", "SELECT * FROM duckdb_settings()", "SELECT * FROM system.main.duckdb_databases",
    "SELECT * FROM information_schema.tables", "SELECT * FROM pg_catalog.pg_settings",
    "SELECT pg_get_viewdef(1)", "SELECT current_setting('allowed_paths')", "SELECT * FROM temp.main.x",
    "SELECT * FROM (SELECT * FROM duckdb_views)", "SELECT sleep_ms(100000)",
    "SELECT current_query() AS q FROM reviews WHERE sentiment(review) > 0",  # the engine's rewritten SQL
    # a two-part name whose first part is a catalog, and a CTE lending a view's name to the real view
    "SELECT * FROM system.pg_settings", "SELECT path FROM system.duckdb_databases", "SELECT * FROM temp.duckdb_settings",
    "SELECT * FROM memory.pg_settings",
    "SELECT d.path FROM (WITH duckdb_databases AS (SELECT 1) SELECT * FROM duckdb_databases) x, duckdb_databases d",
    "WITH duckdb_databases AS (SELECT * FROM duckdb_databases) SELECT * FROM duckdb_databases",
    # a CTE stands only for the name written alone; DuckDB folds ASCII letters only (not the Kelvin sign)
    "WITH pragma_database_list AS (SELECT 1) SELECT name, file FROM main.pragma_database_list",
    "WITH duckdb_databases AS (SELECT 1) SELECT path FROM main.duckdb_databases",
    'WITH "duc\u212adb_databases" AS (SELECT 1) SELECT path FROM duckdb_databases',
]


@pytest.fixture
def served_copy(tmp_path):
    path = make_lake(tmp_path / "lake.db")
    srv, uri = start_server(Service(DuckDBSource(path)))
    with flight.connect(uri) as client:
        yield client, path
    srv.shutdown()


def _rows(path) -> list:
    with duckdb.connect(path, read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        return [tables, con.execute("SELECT count(*) FROM reviews").fetchone()[0]]


def test_an_exchange_cannot_write_to_the_source_file(served_copy):
    client, path = served_copy
    before = _rows(path)
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(WRITE_THROUGH_EXCHANGE.format(path=path)))
    with pytest.raises(flight.FlightUnauthorizedError, match="plain word"):
        writer.begin(pa.schema([("id", pa.int64())]))
        writer.done_writing()
        reader.read_all()
    assert _rows(path) == before
    assert run(client, "SELECT count(*) AS n FROM reviews").column("n")[0].as_py() == before[1]


@pytest.mark.parametrize("sql", SMUGGLED)
def test_sql_hidden_inside_one_select_is_refused(served_copy, sql):
    client, _ = served_copy
    with pytest.raises((flight.FlightUnauthorizedError, pa.ArrowInvalid)) as e:
        run(client, sql)
    assert "42" not in str(e.value) and "Traceback" not in str(e.value)
    assert run(client, "SELECT count(*) AS n FROM reviews").num_rows == 1


def test_text_inside_a_quoted_type_name_never_runs(served_copy):
    client, _ = served_copy
    got = run(client, "SELECT CAST(1 AS \"INT) AS a, getvariable('p') AS b, CAST(1 AS INT\")")
    assert got.num_columns == 1 and got.column(0).to_pylist() == [1]
    with pytest.raises(flight.FlightUnauthorizedError, match="plain word"):
        run(client, "SELECT CAST(1 AS \"my type) AS a, getvariable('p') AS b, CAST(1 AS INT\")")


@pytest.mark.parametrize("sql", CATALOG)
def test_duckdbs_own_catalog_and_settings_are_out_of_reach(served_copy, sql):
    client, path = served_copy
    with pytest.raises(flight.FlightUnauthorizedError) as e:
        run(client, sql)
    assert str(path) not in str(e.value)


def test_an_exchange_checks_the_same_rules(served_copy):
    client, _ = served_copy
    for sql in ("SELECT current_setting('allowed_paths') AS p FROM input",
                "SELECT (SELECT count(*) FROM duckdb_databases) AS p FROM input"):
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(sql))
        with pytest.raises((flight.FlightUnauthorizedError, pa.ArrowInvalid)):
            writer.begin(pa.schema([("id", pa.int64())]))
            writer.done_writing()
            reader.read_all()


def test_a_ctes_name_may_shadow_a_catalog_view(served_copy):
    client, _ = served_copy
    got = run(client, "WITH duckdb_tables AS (SELECT 7 AS n) SELECT n FROM duckdb_tables")
    assert got.column("n").to_pylist() == [7]


def test_columns_and_errors_name_operators_as_the_user_wrote_them(served_copy):
    """Each call gains its connection id (and a model-choosing call an internal name): neither
    may show in a column's name or an error, and a column keeps the name DuckDB gives it."""
    client, _ = served_copy
    got = run(client, "SELECT sentiment(review), sentiment(review, 'sst2-bilstm@4') + 1, upper(review) FROM reviews")
    assert got.schema.names == ["sentiment(review)", "(sentiment(review, 'sst2-bilstm@4') + 1)", "upper(review)"]
    nested = run(client, 'SELECT "sentiment_label(review)" AS label FROM (SELECT sentiment_label(review) FROM reviews)')
    assert set(nested.column("label").to_pylist()) - {None} <= {"negative", "neutral", "positive"}
    for sql, signature in (("SELECT sentiment(review::BLOB) FROM reviews", "'sentiment(BLOB)'"),
                           ("SELECT sentiment(review::BLOB, 'sst2-bilstm@4') FROM reviews",
                            "'sentiment(BLOB, STRING_LITERAL)'"),
                           ("SELECT sentiment(1.5::DECIMAL(18, 3)) FROM reviews", "'sentiment(DECIMAL(18,3))'")):
        with pytest.raises(pa.ArrowInvalid) as e:
            run(client, sql)
        message = str(e.value).split("Detail")[0]
        assert signature in message and "UBIGINT" not in message and "connection" not in message


def test_an_error_quoting_a_huge_value_is_cut_to_fit_a_reply(served_copy):
    """A message past gRPC's 16 kB of status headers reached the client as its own RESOURCE_EXHAUSTED."""
    client, _ = served_copy
    for huge in ("x" * 100_000, "\U0001f600" * 5000, "\u4e2d" * 5000):  # as sent, an emoji is 12 bytes
        with pytest.raises(pa.ArrowInvalid) as e:
            run(client, f"SELECT sentiment(review, '{huge}') FROM reviews")
        assert "characters in all" in str(e.value) and len(str(e.value).encode()) < 8000


def test_errors_and_the_models_action_name_no_server_path(served_copy):
    client, _ = served_copy
    with pytest.raises(pa.ArrowInvalid) as e:
        run(client, "SELECT sentiment(review, 'nope@1') FROM reviews")
    assert "/" not in str(e.value).split("Detail")[0]
    body = b"".join(r.body.to_pybytes() for r in client.do_action(flight.Action("models", b"")))
    assert b'"/' not in body and b"/work" not in body and b"shared/data" not in body


@pytest.mark.parametrize("sql, error", [
    ("SELECT sentiment(review, current_connection_id()) FROM reviews", "must be a string literal"),
    ("SELECT sentiment__with_model(review, 'sst2-bilstm@4', 1::UBIGINT) FROM reviews", "unknown function"),
    ("SELECT sentiment(review, 'sst2-bilstm@4', 1) FROM reviews", "takes 1 argument"),
])
def test_a_client_cannot_name_the_connection_an_operator_call_reports_to(client, sql, error):
    """The planner alone adds each call's connection id (the key to its query's time limit):
    a client that passes one itself, to slip out of its own limit, is refused."""
    with pytest.raises(pa.ArrowInvalid, match=error):
        run(client, sql)
