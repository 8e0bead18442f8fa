"""The Flight SQL protobuf messages we read or write, built at import in a private pool.

No package ships clean Python classes for them: the ones that exist register
`arrow.flight.protocol.sql.*` in protobuf's default pool (two in one process collide) and generated
code is pinned to one protobuf runtime. A table of fields turned into descriptors here depends only
on `protobuf>=4.25` and gives the same bytes on the wire as generated code, field presence included.
"""
from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.any_pb2 import Any
from google.protobuf.message import DecodeError

from flight_lstm.errors import InvalidQuery

PACKAGE = "arrow.flight.protocol.sql"
TYPE_URL_PREFIX = f"type.googleapis.com/{PACKAGE}."

_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "bool": _F.TYPE_BOOL, "uint32": _F.TYPE_UINT32,
          "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "sfixed64": _F.TYPE_SFIXED64, "double": _F.TYPE_DOUBLE}

# name -> [(field, number, type, label)], label "" (plain), "optional" (proto3 optional) or "repeated";
# a capitalised type is another message here. Same bytes as the originals: an enum is its int32, a
# map<string, V> a repeated (key, value) entry, a oneof its members each optional, a FlightInfo its bytes.
MESSAGES = {
    "CommandGetSqlInfo": [("info", 1, "uint32", "repeated")],
    "CommandGetDbSchemas": [("catalog", 1, "string", "optional"),
                            ("db_schema_filter_pattern", 2, "string", "optional")],
    "CommandGetTables": [("catalog", 1, "string", "optional"),
                         ("db_schema_filter_pattern", 2, "string", "optional"),
                         ("table_name_filter_pattern", 3, "string", "optional"),
                         ("table_types", 4, "string", "repeated"),
                         ("include_schema", 5, "bool", "")],
    "CommandStatementQuery": [("query", 1, "string", ""), ("transaction_id", 2, "bytes", "optional")],
    "TicketStatementQuery": [("statement_handle", 1, "bytes", "")],
    "CommandPreparedStatementQuery": [("prepared_statement_handle", 1, "bytes", "")],
    "ActionCreatePreparedStatementRequest": [("query", 1, "string", ""),
                                             ("transaction_id", 2, "bytes", "optional")],
    "ActionCreatePreparedStatementResult": [("prepared_statement_handle", 1, "bytes", ""),
                                            ("dataset_schema", 2, "bytes", ""),
                                            ("parameter_schema", 3, "bytes", "")],
    "ActionClosePreparedStatementRequest": [("prepared_statement_handle", 1, "bytes", "")],
    "DoPutPreparedStatementResult": [("prepared_statement_handle", 1, "bytes", "optional")],
    "CommandGetXdbcTypeInfo": [("data_type", 1, "int32", "optional")],
    # Core Flight actions (arrow.flight.protocol), sent as plain messages rather than Any-packed.
    "StringListValue": [("values", 1, "string", "repeated")],
    "SessionOptionValue": [("string_value", 1, "string", "optional"), ("bool_value", 2, "bool", "optional"),
                           ("int64_value", 3, "sfixed64", "optional"), ("double_value", 4, "double", "optional"),
                           ("string_list_value", 5, "StringListValue", "optional")],
    "SessionOptionsEntry": [("key", 1, "string", ""), ("value", 2, "SessionOptionValue", "")],
    "SetSessionOptionsRequest": [("session_options", 1, "SessionOptionsEntry", "repeated")],
    "SetSessionOptionsError": [("value", 1, "int32", "")],
    "SessionErrorsEntry": [("key", 1, "string", ""), ("value", 2, "SetSessionOptionsError", "")],
    "SetSessionOptionsResult": [("errors", 1, "SessionErrorsEntry", "repeated")],
    "GetSessionOptionsResult": [("session_options", 1, "SessionOptionsEntry", "repeated")],
    "CloseSessionResult": [("status", 1, "int32", "")],
    "CancelFlightInfoRequest": [("info", 1, "bytes", "")],
    "CancelFlightInfoResult": [("status", 1, "int32", "")],
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="flight_lstm_flight_sql.proto", package=PACKAGE, syntax="proto3")
    for name, fields in MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field, number, kind, label in fields:
            f = message.field.add(name=field, number=number, json_name=field,
                                  label=_F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL)
            if kind in _TYPES:
                f.type = _TYPES[kind]
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
            if label == "optional":  # proto3 `optional`: a synthetic one-field oneof keeps presence
                f.proto3_optional = True
                f.oneof_index = len(message.oneof_decl)
                message.oneof_decl.add(name=f"_{field}")
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
CLASSES = {name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
           for name in MESSAGES}
globals().update(CLASSES)  # CommandGetSqlInfo, CommandStatementQuery, ... as module attributes


def pack(message) -> bytes:
    """A message as the serialized `Any` Flight SQL puts in commands, tickets and action results."""
    return Any(type_url=TYPE_URL_PREFIX + message.DESCRIPTOR.name, value=message.SerializeToString()).SerializeToString()


def flight_sql_type(data: bytes) -> tuple[str, bytes] | None:
    """(message name, its bytes) when `data` is a packed Flight SQL message; None for anything else,
    such as SQL text, which never parses as an `Any` with our type URL."""
    try:
        wrapper = Any.FromString(data)
    except Exception:  # protobuf raises DecodeError, or ValueError on some runtimes
        return None
    if not wrapper.type_url.startswith(TYPE_URL_PREFIX):
        return None
    return wrapper.type_url[len(TYPE_URL_PREFIX):], wrapper.value


def unpack(name: str, value: bytes):
    """The message `name` parsed from `value` (KeyError if we don't model that message); bytes that
    are not that message are the client's error, not ours."""
    try:
        return CLASSES[name].FromString(value)
    except DecodeError:
        raise InvalidQuery(f"malformed Flight SQL {name} message") from None
