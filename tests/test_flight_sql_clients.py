"""The protocol gaps real clients hit (issue 21), each through a real client: the ADBC Flight SQL
driver (Go) for most, plain pyarrow.flight where ADBC has no call for it (CancelFlightInfo, the
Handshake's reply message)."""
import base64
import threading
import time
from decimal import Decimal

import adbc_driver_flightsql.dbapi as flight_sql
import duckdb
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import REVIEWS, VIEWS, start_server
from flight_lstm.identifiers import quote
from flight_lstm.server import FlightLSTMServer
from flight_lstm.server.auth import BasicBearerAuth, Tokens, Users
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource

pytestmark = pytest.mark.filterwarnings("ignore:Cannot disable autocommit")

MOODS = "SELECT id, CASE WHEN id % 2 = 0 THEN 'calm' ELSE 'wild' END::ENUM('calm', 'wild') AS mood FROM reviews"
ENUMS = ("SELECT 'x'::ENUM('x', 'y') AS e, ['y'::ENUM('x', 'y')] AS es, {'k': 'x'::ENUM('x', 'y')} AS s, "
         "1.25::DECIMAL(9, 2) AS d")
SLOW = "SELECT count(*) AS n FROM range(1000000000000) t(i) WHERE i % 7 = 3"  # minutes, unless stopped


@pytest.fixture(scope="module")
def uri(lake):
    srv, uri = start_server(Service(DuckDBSource(lake), views={**VIEWS, "moods": MOODS}))
    yield uri
    srv.shutdown()


@pytest.fixture
def conn(uri):
    with flight_sql.connect(uri) as c:
        yield c


def query(conn, sql, parameters=None) -> pa.Table:
    with conn.cursor() as cur:
        cur.execute(sql, parameters)
        return cur.fetch_arrow_table()


def field_meta(field: pa.Field) -> dict[str, str]:
    return {k.decode().removeprefix("ARROW:FLIGHT:SQL:"): v.decode() for k, v in (field.metadata or {}).items()}


def test_a_name_given_twice_is_read_as_announced_through_adbc(conn, uri):
    """GetFlightInfo announces DuckDB's schema, which renames a name given twice (`id_1`); the stream
    had kept the names as written, and ADBC refused it ("inconsistent schema"): any join that
    selects `a.id, b.id`. Both now say the same, with or without an operator lifted."""
    for sql, names in [("SELECT r.id, s.id, r.id AS ID FROM reviews r JOIN reviews s USING (id) ORDER BY r.id LIMIT 2",
                        ["id", "id_1", "ID_2"]),
                       ("SELECT id, sentiment(review) AS id FROM reviews ORDER BY 1 LIMIT 2", ["id", "id_1"])]:
        table = query(conn, sql)
        assert table.schema.names == names and table.column(0).to_pylist() == [0, 1]
        client = flight.connect(uri)
        info = client.get_flight_info(flight.FlightDescriptor.for_command(sql))
        assert info.schema.names == names == client.do_get(info.endpoints[0].ticket).read_all().schema.names


# --- 1. dictionary (ENUM) columns -----------------------------------------------------------

def test_enum_columns_come_back_as_their_values_through_adbc(conn):
    assert query(conn, ENUMS).to_pylist() == [{"e": "x", "es": ["y"], "s": {"k": "x"}, "d": Decimal("1.25")}]
    table = query(conn, "SELECT * FROM moods ORDER BY id")
    assert table.schema.field("mood").type == pa.string()
    assert table.column("mood").to_pylist() == ["calm", "wild"] * (len(REVIEWS) // 2)
    assert query(conn, "SELECT mood FROM moods WHERE id = ?", (3,)).column(0).to_pylist() == ["wild"]


def test_enum_columns_through_every_rpc_that_returns_data(uri):
    client = flight.connect(uri)
    info = client.get_flight_info(flight.FlightDescriptor.for_path("moods"))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert info.schema.field("mood").type == pa.string() and table.schema.equals(info.schema)
    assert client.get_schema(flight.FlightDescriptor.for_command(ENUMS.encode())).schema.field("es").type == \
        pa.list_(pa.string())
    listed = {i.descriptor.path[0].decode(): i.schema for i in client.list_flights()}
    assert listed["moods"].field("mood").type == pa.string()
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(
        b"SELECT x, CAST(x AS ENUM('a', 'b')) AS e FROM input"))
    writer.begin(pa.schema([("x", pa.string())]))
    writer.write_batch(pa.record_batch({"x": ["a", "b"]}))
    writer.done_writing()
    out = reader.read_all()
    assert out.schema.field("e").type == pa.string() and out.column("e").to_pylist() == ["a", "b"]


# --- 2 and 7. error classes -----------------------------------------------------------------

@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT * FROM nowhere", "SELECT sentiment(42)"])
def test_a_bad_query_is_invalid_argument_and_adbc_raises_programming_error(conn, sql):
    with pytest.raises(adbc_driver_manager.ProgrammingError, match="INVALID_ARGUMENT") as caught:
        query(conn, sql)
    assert "Traceback" not in str(caught.value) and 'File "' not in str(caught.value)


def test_get_schema_answers_like_get_flight_info(uri):
    client = flight.connect(uri)
    for sql in (b"SELEC 1", b"SELECT * FROM nowhere"):
        for call in (client.get_flight_info, client.get_schema):
            with pytest.raises(pa.ArrowInvalid) as caught:
                call(flight.FlightDescriptor.for_command(sql))
            assert "Traceback" not in str(caught.value) and 'File "' not in str(caught.value)
    with pytest.raises(flight.FlightUnauthorizedError, match="read-only"):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"DROP TABLE reviews"))
    # pyarrow's GetSchema callback cannot send PERMISSION_DENIED: the message names it instead.
    with pytest.raises(pa.ArrowException, match="permission denied: queries are read-only") as caught:
        client.get_schema(flight.FlightDescriptor.for_command(b"DROP TABLE reviews"))
    assert "Traceback" not in str(caught.value) and 'File "' not in str(caught.value)


# --- 3. session options ---------------------------------------------------------------------

def test_adbc_reads_the_current_catalog_and_schema(conn):
    assert conn.adbc_current_catalog == ""
    assert conn.adbc_current_db_schema == "main"


def test_adbc_sets_the_session_schema_it_has_and_no_other(conn):
    conn.adbc_current_db_schema = "main"
    assert conn.adbc_current_db_schema == "main"
    with pytest.raises(adbc_driver_manager.Error, match="schema"):
        conn.adbc_current_db_schema = "elsewhere"
    assert conn.adbc_current_db_schema == "main"


def test_close_session_and_unknown_actions(uri):
    client = flight.connect(uri)
    (result,) = client.do_action(flight.Action("CloseSession", b""))
    assert result.body.to_pybytes() == b"\x08\x01"  # CloseSessionResult{status: CLOSED}
    with pytest.raises(pa.ArrowNotImplementedError, match="GetSessionOptions") as caught:  # UNIMPLEMENTED
        list(client.do_action(flight.Action("NoSuchAction", b"")))
    assert "CancelFlightInfo" in str(caught.value) and "health" in str(caught.value)
    actions = {name for name, _ in client.list_actions()}
    assert {"SetSessionOptions", "GetSessionOptions", "CloseSession", "CancelFlightInfo"} <= actions


# --- 4. type metadata -----------------------------------------------------------------------

def test_adbc_sees_sql_type_names_of_every_column(conn):
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    columns = {(t["table_name"], c["column_name"]): c
               for s in objects[0]["catalog_db_schemas"] for t in s["db_schema_tables"] for c in t["table_columns"]}
    assert {k: c["xdbc_type_name"] for k, c in columns.items() if k[0] in ("sales", "moods")} == {
        ("sales", "store"): "VARCHAR", ("sales", "ts"): "TIMESTAMP", ("sales", "amount"): "DOUBLE",
        ("moods", "id"): "BIGINT", ("moods", "mood"): "VARCHAR"}


ODD_NAMES = {("main", "my table"): 1, ("main", "select"): 2, ("main", 'a"b'): 3, ("odd sch", "t.x"): 4,
             ("main", "Ünï"): 5, ("main", "Mixed"): 6}


def test_tables_with_any_name_are_listed_described_and_read_through_every_client(tmp_path):
    """A table named `my table` broke ListFlights and ADBC's get_objects for every table: it was
    listed unquoted, and read back as the table `my`. Each part is now quoted unless DuckDB reads
    it bare as itself."""
    path = tmp_path / "odd.db"
    with duckdb.connect(str(path)) as con:
        con.execute('CREATE SCHEMA "odd sch"')
        for (schema, table), value in ODD_NAMES.items():
            con.execute(f"CREATE TABLE {quote(schema)}.{quote(table)} AS SELECT {value} AS v")
    srv, uri = start_server(Service(DuckDBSource(path)))
    try:
        infos = list(flight.connect(uri).list_flights())
        read = {i.descriptor.path[0].decode(): flight.connect(uri).do_get(i.endpoints[0].ticket).read_all()
                for i in infos}
        assert sorted(t["v"][0].as_py() for t in read.values()) == sorted(ODD_NAMES.values())
        assert {"Mixed", '"my table"', '"select"', '"a""b"', '"odd sch"."t.x"', '"Ünï"'} == set(read)
        with flight_sql.connect(uri) as conn:
            objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
            listed = {(s["db_schema_name"], t["table_name"]): t["table_columns"][0]["column_name"]
                      for s in objects[0]["catalog_db_schemas"] for t in s["db_schema_tables"]}
            assert listed == {name: "v" for name in ODD_NAMES}
            for (schema, table), value in ODD_NAMES.items():
                assert conn.adbc_get_table_schema(table, db_schema_filter=schema).names == ["v"]
                assert query(conn, f"SELECT v FROM {quote(schema)}.{quote(table)}")["v"][0].as_py() == value
    finally:
        srv.shutdown()


def test_a_relation_that_cannot_be_read_is_listed_without_columns_and_the_rest_as_before(tmp_path):
    """A lake view over a dropped table failed ListFlights and ADBC's get_objects for every table.
    It is listed with no columns now; reading it tells its error."""
    path = tmp_path / "broken.db"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE good AS SELECT 1 AS v; CREATE TABLE gone AS SELECT 2 AS w; "
                    "CREATE VIEW broken AS SELECT * FROM gone; DROP TABLE gone")
    srv, uri = start_server(Service(DuckDBSource(path), views={"scored": "SELECT v + 1 AS u FROM good"}))
    try:
        listed = {i.descriptor.path[0].decode(): i.schema.names for i in flight.connect(uri).list_flights()}
        assert listed == {"good": ["v"], "broken": [], "scored": ["u"]}
        with flight_sql.connect(uri) as conn:
            objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
            columns = {t["table_name"]: [c["column_name"] for c in t["table_columns"]]
                       for s in objects[0]["catalog_db_schemas"] for t in s["db_schema_tables"]}
            assert columns == {"good": ["v"], "broken": [], "scored": ["u"]}
            with pytest.raises(adbc_driver_manager.ProgrammingError, match="gone does not exist"):
                query(conn, "SELECT * FROM broken")
            assert query(conn, "SELECT u FROM scored")["u"].to_pylist() == [2]
    finally:
        srv.shutdown()


def test_result_schemas_carry_flight_sql_column_metadata(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT id, sentiment(review) AS s, 1.25::DECIMAL(9, 2) AS d, TIMESTAMPTZ '2026-01-01' AS t "
                    "FROM reviews")
        schema = cur.fetch_arrow_table().schema
    meta = {f.name: field_meta(f) for f in schema}
    assert meta["id"]["TYPE_NAME"] == "BIGINT" and meta["id"]["PRECISION"] == "19"
    assert meta["s"]["TYPE_NAME"] == "DOUBLE"
    assert (meta["d"]["TYPE_NAME"], meta["d"]["PRECISION"], meta["d"]["SCALE"]) == ("DECIMAL(9,2)", "9", "2")
    assert meta["t"]["TYPE_NAME"] == "TIMESTAMP WITH TIME ZONE" and meta["t"]["SCALE"] == "6"
    assert all(m["IS_READ_ONLY"] == "1" and m["IS_AUTO_INCREMENT"] == "0" for m in meta.values())


def test_xdbc_type_info_lists_the_result_types(conn, uri):
    from flight_lstm.server import flight_sql_messages as messages

    client = flight.connect(uri)
    descriptor = flight.FlightDescriptor.for_command(messages.pack(messages.CommandGetXdbcTypeInfo()))
    info = client.get_flight_info(descriptor)
    table = client.do_get(info.endpoints[0].ticket).read_all()
    names = table.column("type_name").to_pylist()
    assert {"BOOLEAN", "BIGINT", "DOUBLE", "VARCHAR", "DATE", "TIMESTAMP", "DECIMAL"} <= set(names)
    assert table.column("data_type").to_pylist() == sorted(table.column("data_type").to_pylist())
    descriptor = flight.FlightDescriptor.for_command(messages.pack(messages.CommandGetXdbcTypeInfo(data_type=12)))
    one = client.do_get(client.get_flight_info(descriptor).endpoints[0].ticket).read_all()
    assert one.column("type_name").to_pylist() == ["VARCHAR"] and one.schema.equals(info.schema)


def test_prepared_statements_announce_their_parameters(conn):
    with conn.cursor() as cur:
        parameters = cur.adbc_prepare("SELECT id FROM reviews WHERE id > ? AND review <> ?")
        assert parameters.names == ["1", "2"]
        assert all(pa.types.is_union(f.type) for f in parameters)
        assert cur.adbc_prepare("SELECT id FROM reviews") is None  # no placeholders, no parameter schema


# --- 5. many rows of parameters -------------------------------------------------------------

def test_many_rows_of_parameters_run_once_each_results_concatenated(conn):
    rows = pa.record_batch({"id": pa.array([5, 1, 6], pa.int64())})
    table = query(conn, "SELECT id, sentiment_label(review) AS l FROM reviews WHERE id = ?", rows)
    assert table.column("id").to_pylist() == [5, 1, 6]
    many = pa.record_batch({"lo": [0, 6], "hi": [2, 7]})
    assert query(conn, "SELECT id FROM reviews WHERE id BETWEEN ? AND ? ORDER BY id", many).column(0).to_pylist() \
        == [0, 1, 2, 6, 7]


# --- 6. handshake ---------------------------------------------------------------------------

class _Reply(flight.ClientAuthHandler):
    """Reads the Handshake's reply message, as clients that wait for one do."""

    def __init__(self):
        super().__init__()
        self.reply = None

    def authenticate(self, outgoing, incoming):
        outgoing.write(b"")
        self.reply = incoming.read()

    def get_token(self):
        return b""


def test_handshake_is_answered_without_auth(uri):
    reply = _Reply()
    flight.connect(uri).authenticate(reply)
    assert reply.reply == b""


class _SlowReply(_Reply):
    """Writes its request late, as a loaded client may: a server that answered and ended the call
    first would leave the client's failed write waiting forever for its unread reply."""

    def authenticate(self, outgoing, incoming):
        time.sleep(0.3)
        super().authenticate(outgoing, incoming)


def test_handshake_waits_for_the_request_of_a_slow_client(uri):
    reply, done = _SlowReply(), threading.Event()
    worker = threading.Thread(target=lambda: (flight.connect(uri).authenticate(reply), done.set()), daemon=True)
    worker.start()
    assert done.wait(10) and reply.reply == b""


def test_handshake_reply_carries_the_bearer_token_with_auth(login_server):
    client = flight.connect(login_server)
    reply = _Reply()
    basic = b"Basic " + base64.b64encode(b"ana:correct horse battery")
    client.authenticate(reply, options=flight.FlightCallOptions(headers=[(b"authorization", basic)]))
    token = reply.reply.decode()
    assert token.count(".") == 2
    bearer = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    info = client.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT 7 AS seven"), bearer)
    assert client.do_get(info.endpoints[0].ticket, bearer).read_all().column(0).to_pylist() == [7]
    # Pyarrow's own login still works, and ADBC's username and password.
    assert client.authenticate_basic_token("ana", "correct horse battery")[1].startswith(b"Bearer ")
    login = {"username": "ana", "password": "correct horse battery"}
    with flight_sql.connect(login_server, db_kwargs=login) as conn:
        assert conn.adbc_current_db_schema == "main"


# --- 8. CancelFlightInfo --------------------------------------------------------------------

def _cancel_request(info: flight.FlightInfo) -> bytes:
    """CancelFlightInfoRequest{info} as protobuf writes it: field 1, length-delimited."""
    body, size, length = info.serialize(), b"", len(info.serialize())
    while True:
        size += bytes([(length & 0x7F) | (0x80 if length > 0x7F else 0)])
        length >>= 7
        if not length:
            break
    return b"\x0a" + size + body


def _do_get_in_thread(client, ticket, options=None) -> tuple[threading.Thread, dict]:
    """DoGet of a slow query on its own thread (the call waits for DuckDB's first batch); the
    outcome holds the error it ended with."""
    outcome = {}

    def run():
        try:
            client.do_get(ticket, options).read_all()
            outcome["error"] = None
        except Exception as e:  # noqa: BLE001 - the test reads it
            outcome["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _cancel(client, info, options=None) -> bytes:
    """CancelFlightInfo, retried while the DoGet has not started yet (NOT_FOUND)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            (result,) = client.do_action(flight.Action("CancelFlightInfo", _cancel_request(info)), options)
            return result.body.to_pybytes()
        except KeyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_cancel_flight_info_stops_a_running_query(uri):
    client, other = flight.connect(uri), flight.connect(uri)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(SLOW.encode()))
    thread, outcome = _do_get_in_thread(client, info.endpoints[0].ticket)
    assert _cancel(other, info) == b"\x08\x01"  # CANCEL_STATUS_CANCELLED
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], flight.FlightCancelledError)
    with pytest.raises(KeyError, match="not running|no query"):  # NOT_FOUND once it ended
        list(other.do_action(flight.Action("CancelFlightInfo", _cancel_request(info))))
    assert client.do_get(flight.Ticket(b"SELECT 1 AS one")).read_all().num_rows == 1


def test_cancel_flight_info_stops_only_the_callers_query(lake, tmp_path):
    users = Users(tmp_path / "users.json")
    users.add("ana", "correct horse battery")
    users.add("bob", "another horse battery")
    server = FlightLSTMServer(Service(DuckDBSource(lake)), "grpc://127.0.0.1:0", auth=BasicBearerAuth(users, Tokens()))
    threading.Thread(target=server.serve, daemon=True).start()
    location = f"grpc://127.0.0.1:{server.port}"
    try:
        ana, bob = flight.connect(location), flight.connect(location)
        ana_login = flight.FlightCallOptions(headers=[ana.authenticate_basic_token("ana", "correct horse battery")])
        bob_login = flight.FlightCallOptions(headers=[bob.authenticate_basic_token("bob", "another horse battery")])
        info = ana.get_flight_info(flight.FlightDescriptor.for_command(SLOW.encode()), ana_login)
        thread, outcome = _do_get_in_thread(ana, info.endpoints[0].ticket, ana_login)
        time.sleep(1)
        with pytest.raises(KeyError):  # bob cannot stop ana's query, nor tell it runs
            list(bob.do_action(flight.Action("CancelFlightInfo", _cancel_request(info)), bob_login))
        assert thread.is_alive()
        assert _cancel(ana, info, ana_login) == b"\x08\x01"
        thread.join(30)
        assert not thread.is_alive() and isinstance(outcome["error"], flight.FlightCancelledError)
    finally:
        server.shutdown()
