"""A bad request to every RPC gets a clean status: one of ours, never INTERNAL, and no Python
traceback in anything the client sees."""
import base64

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from google.protobuf.any_pb2 import Any

from flight_lstm.server import flight_sql_messages as messages

GARBAGE = b"\xff\xfe\x00\x80 not utf-8 \xc3\x28"
# Every Flight SQL command and ticket a client may send, known to the server or not.
COMMANDS = ["CommandStatementQuery", "TicketStatementQuery", "CommandPreparedStatementQuery", "CommandGetSqlInfo",
            "CommandGetCatalogs", "CommandGetDbSchemas", "CommandGetTables", "CommandGetTableTypes",
            "CommandGetPrimaryKeys", "CommandGetExportedKeys", "CommandGetImportedKeys", "CommandGetCrossReference",
            "CommandGetXdbcTypeInfo", "CommandStatementUpdate", "CommandPreparedStatementUpdate",
            "CommandStatementIngest", "CommandStatementSubstraitPlan", "CommandNoSuchThing"]
ACTIONS = ["CreatePreparedStatement", "ClosePreparedStatement", "SetSessionOptions", "CancelFlightInfo",
           "explain", "BeginTransaction", "CancelQuery", "NoSuchAction", ""]


def packed(name: str, value: bytes = b"\xff\xff\xff\xff") -> bytes:
    return Any(type_url=messages.TYPE_URL_PREFIX + name, value=value).SerializeToString()


def clean(call) -> None:
    """Run a call that may fail: a failure must be a clean status."""
    try:
        result = call()
        if hasattr(result, "read_all"):
            result.read_all()
    except pa.ArrowException as e:
        text = str(e)
        assert not isinstance(e, flight.FlightInternalError), text
        assert "Traceback" not in text and 'File "' not in text, text


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flight_sql_command_with_bad_fields(client, name):
    for value in (b"\xff\xff\xff\xff", b"\x0a\x03\xff\xfe\xfd", b"\x12\x00"):  # bad varint, bad UTF-8, empty
        descriptor = flight.FlightDescriptor.for_command(packed(name, value))
        clean(lambda: client.get_flight_info(descriptor))
        clean(lambda: client.get_schema(descriptor))
        clean(lambda: client.do_get(flight.Ticket(packed(name, value))))
        writer, reader = client.do_put(descriptor, pa.schema([("p", pa.int64())]))

        def put():
            writer.write_batch(pa.record_batch({"p": [1]}))
            writer.done_writing()
            reader.read()
            writer.close()

        clean(put)


def test_plain_flight_rpcs_with_bad_requests(client):
    for descriptor in (flight.FlightDescriptor.for_command(GARBAGE), flight.FlightDescriptor.for_command(b""),
                       flight.FlightDescriptor.for_path("no", "such", "table"),
                       flight.FlightDescriptor.for_path(GARBAGE.decode("latin-1")),
                       flight.FlightDescriptor.for_command(b"DROP TABLE reviews")):
        clean(lambda: client.get_flight_info(descriptor))
        clean(lambda: client.get_schema(descriptor))
        clean(lambda: client.do_exchange(descriptor)[1].read_all())
    for ticket in (GARBAGE, b"", b"SELEC 1", b"\x0a\x05hello", packed("Nothing")):
        clean(lambda: client.do_get(flight.Ticket(ticket)))
    clean(lambda: list(client.list_flights(GARBAGE)))
    writer, _ = client.do_put(flight.FlightDescriptor.for_path("reviews"), pa.schema([("a", pa.int64())]))
    clean(lambda: (writer.write_batch(pa.record_batch({"a": [1]})), writer.close()))


@pytest.mark.parametrize("action", ACTIONS)
def test_every_action_with_a_garbage_body(client, action):
    for body in (GARBAGE, b"", packed("ActionCreatePreparedStatementRequest"), b"\x0a\x05hello"):
        clean(lambda: list(client.do_action(flight.Action(action, body))))


def test_a_bad_query_answers_without_a_traceback_on_every_rpc_that_plans(client):
    sql = b"SELEC * FROM nowhere"
    for call in (lambda: client.get_flight_info(flight.FlightDescriptor.for_command(sql)),
                 lambda: client.get_schema(flight.FlightDescriptor.for_command(sql)),
                 lambda: client.do_get(flight.Ticket(sql)).read_all(),
                 lambda: list(client.do_action(flight.Action("explain", sql))),
                 lambda: client.get_flight_info(flight.FlightDescriptor.for_command(
                     messages.pack(messages.CommandStatementQuery(query=sql.decode()))))):
        with pytest.raises(pa.ArrowInvalid, match="syntax error") as caught:  # INVALID_ARGUMENT everywhere
            call()
        assert "Traceback" not in str(caught.value) and 'File "' not in str(caught.value)


def test_handshake_with_bad_credentials_is_a_clean_status(login_server):
    client = flight.connect(login_server)
    for header in (b"Basic " + base64.b64encode(b"ana:wrong"), b"Basic !!!", b"Bearer forged.token.x"):
        options = flight.FlightCallOptions(headers=[(b"authorization", header)])
        with pytest.raises(flight.FlightUnauthenticatedError) as caught:
            client.authenticate(_Silent(), options=options)
        assert "Traceback" not in str(caught.value)
        clean(lambda: client.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT 1"), options))


class _Silent(flight.ClientAuthHandler):
    def authenticate(self, outgoing, incoming):
        outgoing.write(b"")
        incoming.read()

    def get_token(self):
        return b""
