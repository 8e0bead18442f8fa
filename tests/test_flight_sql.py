"""Flight SQL end to end with the real ADBC Flight SQL driver (Go), beside plain pyarrow.flight clients."""
import threading
import time

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf.any_pb2 import Any

from conftest import REVIEWS, VIEWS, run, start_server
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

SCORED = "SELECT id, review, sentiment(review) AS s, sentiment_label(review) AS l FROM reviews ORDER BY id"


@pytest.fixture
def conn(server):
    with flight_sql.connect(server) as c:
        yield c


def command(message) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(messages.pack(message))


def bare(name: str) -> flight.FlightDescriptor:
    """A Flight SQL command we only need by name (all its fields left empty)."""
    return flight.FlightDescriptor.for_command(
        Any(type_url=messages.TYPE_URL_PREFIX + name, value=b"").SerializeToString())


def fetch(client: flight.FlightClient, descriptor: flight.FlightDescriptor) -> tuple[flight.FlightInfo, pa.Table]:
    info = client.get_flight_info(descriptor)
    return info, client.do_get(info.endpoints[0].ticket).read_all()


def test_adbc_query_with_operators_matches_a_plain_flight_client(conn, client):
    with conn.cursor() as cur:
        cur.execute(SCORED)
        table = cur.fetch_arrow_table()
    assert table.equals(run(client, SCORED))
    assert table.column("id").to_pylist() == list(range(len(REVIEWS)))
    assert table.column("s").null_count == 2  # NULL and '' score NULL


def test_bound_parameters_are_values_never_sql(conn):
    sql = "SELECT id, sentiment(review) AS s FROM reviews WHERE id > ? ORDER BY id"
    with conn.cursor() as cur:
        cur.execute(sql, (5,))
        assert [r[0] for r in cur.fetchall()] == [6, 7]
        cur.execute(sql, (6,))  # the driver reuses the prepared statement with new values
        assert [r[0] for r in cur.fetchall()] == [7]
        cur.execute("SELECT count(*) AS n FROM reviews WHERE review = $1 OR id = $2", ("It isn't good at all.", 0))
        assert cur.fetchone() == (2,)
        cur.execute("SELECT count(*) AS n FROM reviews WHERE review = ?", ("x' OR '1'='1",))
        assert cur.fetchone() == (0,)


def test_flight_info_schema_is_the_stream_schema_exactly(client):
    sql = ("SELECT id, review, sentiment(review) AS s, [1.5, NULL] AS xs, "
           "forecast_interval([1.0, 2.0, 3.0], 2, 0.9) AS fi, TIMESTAMP '2026-01-01' AS t FROM reviews")
    info, table = fetch(client, command(messages.CommandStatementQuery(query=sql)))
    assert info.schema.equals(table.schema, check_metadata=True) and table.num_rows == len(REVIEWS)
    assert [f.nullable for f in info.schema] == [f.nullable for f in table.schema]
    assert messages.flight_sql_type(info.endpoints[0].ticket.ticket)[0] == "TicketStatementQuery"
    assert client.get_schema(command(messages.CommandStatementQuery(query=sql))).schema.equals(info.schema)


def test_catalog_metadata_through_adbc(conn, client):
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    (catalog,) = objects
    tables = {t["table_name"]: t for s in catalog["catalog_db_schemas"] for t in s["db_schema_tables"]}
    assert {n: t["table_type"] for n, t in tables.items()} == {"reviews": "TABLE", "sales": "TABLE", "scored": "VIEW"}
    assert [c["column_name"] for c in tables["scored"]["table_columns"]] == ["id", "review", "score"]
    assert conn.adbc_get_table_schema("scored").equals(
        client.get_flight_info(flight.FlightDescriptor.for_path("scored")).schema)
    assert conn.adbc_get_table_types() == ["TABLE", "VIEW"]
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "flight-lstm" and info["vendor_version"] and info["vendor_arrow_version"] == pa.__version__


def test_sql_info_says_read_only_and_describes_the_dialect(client):
    _, table = fetch(client, command(messages.CommandGetSqlInfo(info=[3, 8, 504, 508, 507, 99999])))
    values = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist()))
    assert values[3] is True and values[8] == 0 and values[504] == '"' and values[507] == 3
    assert "select" in [k.lower() for k in values[508]] and 99999 not in values


def test_sql_info_answers_each_id_once(client):
    _, table = fetch(client, command(messages.CommandGetSqlInfo(info=[508, 3] * 5000)))  # 40 kB asking for 10,000
    assert table.column("info_name").to_pylist() == [508, 3]


def test_metadata_tickets_are_the_any_packed_command(client):
    descriptor = command(messages.CommandGetTables(table_name_filter_pattern="sc%", include_schema=True))
    info, table = fetch(client, descriptor)
    assert info.endpoints[0].ticket.ticket == descriptor.command
    assert table.column("table_name").to_pylist() == ["scored"]
    assert pa.ipc.read_schema(pa.py_buffer(table.column("table_schema")[0].as_py())).names == ["id", "review", "score"]
    assert info.schema.equals(table.schema)


@pytest.mark.parametrize("name", ["CommandGetPrimaryKeys", "CommandGetExportedKeys", "CommandGetImportedKeys",
                                  "CommandGetCrossReference", "CommandGetCatalogs"])
def test_empty_listings(client, name):
    info, table = fetch(client, bare(name))
    assert table.num_rows == 0 and table.schema.equals(info.schema)


def test_schemas_listing(client):
    _, table = fetch(client, command(messages.CommandGetDbSchemas()))
    assert table.column("db_schema_name").to_pylist() == ["main"]
    _, table = fetch(client, command(messages.CommandGetDbSchemas(catalog="elsewhere")))
    assert table.num_rows == 0


@pytest.mark.parametrize("sql", ["DROP TABLE reviews", "INSERT INTO reviews VALUES (99, 'x')",
                                 "CREATE TABLE t AS SELECT 1", "UPDATE reviews SET review = ''"])
def test_writes_through_a_prepared_statement_are_permission_denied(conn, sql):
    with conn.cursor() as cur, pytest.raises(adbc_driver_manager.ProgrammingError, match="read-only") as caught:
        cur.execute(sql)
    assert "Traceback" not in str(caught.value)


def test_update_ingest_and_raw_doput_are_refused(conn, client):
    with conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="read-only"):
            cur.executemany("INSERT INTO reviews VALUES (?, ?)", [(98, "a"), (99, "b")])
        with pytest.raises(adbc_driver_manager.Error, match="read-only"):
            cur.adbc_ingest("reviews", pa.table({"id": [1], "review": ["x"]}), mode="append")
    for descriptor in [bare("CommandStatementUpdate"), flight.FlightDescriptor.for_command(b"SELECT 1")]:
        writer, _ = client.do_put(descriptor, pa.schema([("a", pa.int64())]))
        with pytest.raises(flight.FlightUnauthorizedError, match="read-only"):
            writer.write_table(pa.table({"a": [1]}))
            writer.close()


@pytest.mark.parametrize("sql, words", [("SELEC 1", "syntax error"), ("SELECT * FROM nowhere", "nowhere"),
                                        ("SELECT sentiment(review, 'no-such-model') FROM reviews", "no-such-model")])
def test_bad_sql_is_a_clear_error_and_the_connection_keeps_working(conn, sql, words):
    with conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error, match=words) as caught:
            cur.execute(sql)
        assert "Traceback" not in str(caught.value)
        cur.execute("SELECT count(*) AS n FROM reviews")
        assert cur.fetchone() == (len(REVIEWS),)


def test_low_level_statement_takes_the_statement_query_path(conn):
    with conn.cursor() as cur:
        statement = cur.adbc_statement
        statement.set_sql_query("SELECT id, sentiment_label(review) AS l FROM scored WHERE id < 2 ORDER BY id")
        handle, _ = statement.execute_query()
        table = pa.RecordBatchReader._import_from_c(handle.address).read_all()
        assert table.column("l").to_pylist() == ["positive", "negative"]
        statement.set_sql_query("DELETE FROM reviews")
        with pytest.raises(adbc_driver_manager.Error, match="read-only"):
            statement.execute_update()


def test_plain_flight_clients_work_alongside(conn, client):
    with conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert client.do_get(flight.Ticket(b"SELECT 7 AS seven")).read_all().column(0).to_pylist() == [7]
        assert cur.fetchone() == (1,)
    assert run(client, "select count(*) from scored").column(0).to_pylist() == [len(REVIEWS)]
    assert {"CreatePreparedStatement", "health"} <= {t for t, _ in client.list_actions()}


def test_prepared_statements_expire_and_close(lake):
    srv, uri = start_server(Service(DuckDBSource(lake), views=VIEWS))
    statements = srv.flight_sql.statements
    statements.ttl = 0.5
    try:
        with flight_sql.connect(uri) as conn, conn.cursor() as cur:
            sql = "SELECT id FROM reviews WHERE id = ?"
            cur.execute(sql, (1,))
            assert cur.fetchall() == [(1,)] and len(statements) == 1
            time.sleep(0.8)
            assert len(statements) == 0  # abandoned: gone without a close
            with pytest.raises(adbc_driver_manager.Error, match="expired"):
                cur.execute(sql, (2,))  # the driver reuses its now-expired handle
            cur.execute("SELECT 2 AS two")
            assert cur.fetchall() == [(2,)] and len(statements) == 1
        assert len(statements) == 0  # closing the cursor closed it
    finally:
        srv.shutdown()


def test_adbc_with_user_and_password(lake, tmp_path):
    from flight_lstm.server import FlightLSTMServer
    from flight_lstm.server.auth import BasicBearerAuth, Tokens, Users

    users = Users(tmp_path / "users.json")
    users.add("ana", "correct horse battery")
    server = FlightLSTMServer(Service(DuckDBSource(lake)), "grpc://127.0.0.1:0", auth=BasicBearerAuth(users, Tokens()))
    threading.Thread(target=server.serve, daemon=True).start()
    uri = f"grpc://127.0.0.1:{server.port}"
    try:
        login = {"username": "ana", "password": "correct horse battery"}
        with flight_sql.connect(uri, db_kwargs=login) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM reviews WHERE id < ?", (3,))
            assert cur.fetchone() == (3,)
        request = messages.ActionCreatePreparedStatementRequest(query="SELECT 1")
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(flight.connect(uri).do_action(flight.Action("CreatePreparedStatement", messages.pack(request))))
    finally:
        server.shutdown()
