"""The Flight face: descriptors and tickets in, FlightInfo and record batch streams out.

A command descriptor carries SQL text; a path descriptor names a source table or published view.
The ticket is the SQL itself, so any replica can serve it and DoGet re-checks it like new input.
A command or ticket that is an Any-packed Flight SQL message goes to `FlightSQL` instead; DoExchange
runs row-wise SQL over the client's own batches. Every result leaves through `columns`: dictionaries
decoded, columns described; CancelFlightInfo stops a running DoGet by its ticket.

Every call is counted while it is in flight (`calls`): past the server's limits it is refused
before its handler runs (or, for a caller known only by its address, as the handler starts), and
a stream whose client sends and reads nothing for --idle-seconds and a grace loses its connection.
"""
from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.flight as flight

from flight_lstm.errors import InvalidQuery, NotFound, QueryRefused, Unsupported, text_of
from flight_lstm.server import calls, columns, liveness
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.server.auth import CALLS_KEY, HANDSHAKES_AT_ONCE, BasicBearerAuth, HandshakeAnswer, caller
from flight_lstm.server.cancels import Cancels, ending
from flight_lstm.server.errors import flight_errors, mapped, without_flight_errors
from flight_lstm.server.flight_sql import ACTIONS as FLIGHT_SQL_ACTIONS
from flight_lstm.server.flight_sql import FlightSQL
from flight_lstm.server.telemetry import Query
from flight_lstm.server.uploads import received, received_schema
from flight_lstm.service import Service

ACTIONS = {
    "health": "Readiness: status, source and published views (JSON).",
    "models": "The model registry: name, version, kind, training data and scores (JSON list).",
    "explain": "Body: SQL. How it splits: the scans a pushdown source runs and the local query (JSON).",
    "CancelFlightInfo": "Flight: stop your running DoGets of a FlightInfo's tickets (CancelFlightInfoRequest).",
}
CANCELLED = 1  # CancelFlightInfoResult.CancelStatus


class FlightLSTMServer(flight.FlightServerBase):
    def __init__(self, service: Service, location: str = "grpc://127.0.0.1:8815", *,
                 auth: BasicBearerAuth | None = None, max_calls: int | None = None,
                 max_calls_per_user: int | None = None, **kwargs):
        """`max_calls` in flight at once (default: what the memory cap affords, calls.afforded_calls)
        and `max_calls_per_user` of one user, or one address without auth (default: a quarter)."""
        self.waits = calls.Waits(calls.silent_seconds(service.engine.limits.idle_seconds), lambda: self.port)
        self.calls = calls.InFlight(auth, max_calls, max_calls_per_user, self.waits)
        # The calls' own middleware is last: pyarrow ends only the middleware of a call that started.
        middleware = {liveness.KEY: calls.Guarded(liveness.Liveness()), CALLS_KEY: self.calls}
        # Without auth every Handshake is anonymous: those waiting for their request are one caller's share.
        handshakes = HandshakeAnswer(at_once=min(HANDSHAKES_AT_ONCE, self.calls.per_user))
        super().__init__(location, middleware=middleware, auth_handler=handshakes, **kwargs)
        self.service = service
        self.flight_sql = FlightSQL(service)
        self.cancels = Cancels()
        self.auth_required = auth is not None

    def _ticket_sql(self, descriptor: flight.FlightDescriptor) -> str:
        if descriptor.descriptor_type == flight.DescriptorType.CMD:
            return text_of(descriptor.command, "the command")
        return self.service.dataset_sql(".".join(p.decode() if isinstance(p, bytes) else p for p in descriptor.path))

    def _info(self, context, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        started = time.perf_counter()
        try:
            message = _flight_sql(descriptor)
            if message:
                return self.flight_sql.flight_info(*message, descriptor, caller(context))
            sql = self._ticket_sql(descriptor)
            user = caller(context)
            schema = columns.described(self.service.schema(self.service.plan(sql, user=user), user=user))
        except BaseException as e:
            # A query that fails planning ends here, not in DoGet; its time includes the planning.
            Query("get_flight_info", caller(context), started, calls.failed(context)).end(e)
            raise
        endpoint = flight.FlightEndpoint(sql.encode(), [])
        return flight.FlightInfo(schema, descriptor, [endpoint], -1, -1)

    @flight_errors
    def list_flights(self, context, criteria):
        calls.enter(context)
        return [
            flight.FlightInfo(columns.described(schema), flight.FlightDescriptor.for_path(name),
                              [flight.FlightEndpoint(sql.encode(), [])], -1, -1)
            for name, sql, schema in self.service.datasets()
        ]

    @flight_errors
    def get_flight_info(self, context, descriptor):
        calls.enter(context)
        return self._info(context, descriptor)

    @without_flight_errors
    def get_schema(self, context, descriptor):
        calls.enter(context)
        return flight.SchemaResult(self._info(context, descriptor).schema)

    @flight_errors
    def do_get(self, context, ticket):
        calls.enter(context)
        query = Query("do_get", caller(context), failed=calls.failed(context))
        was_cancelled, end = self.cancels.start(caller(context), ticket.ticket)
        gone, refused = liveness.cancelled(context), calls.refused(context)

        def cancelled() -> bool | str:
            return was_cancelled() or gone() or refused()

        try:
            message = messages.flight_sql_type(ticket.ticket)
            if message:
                schema, batches, query.operators = self.flight_sql.do_get(*message, cancelled, caller(context))
            else:
                plan = self.service.plan(text_of(ticket.ticket, "the command"), user=caller(context))
                (schema, batches), query.operators = (columns.result(*self.service.stream(plan, cancelled)),
                                                      plan.operators)
        except BaseException as e:
            end()
            query.end(e)
            raise
        # Between a batch handed to pyarrow and its asking for the next, the client is reading it.
        batches = self.waits.of(context).batches(mapped(query.watch(ending(batches, end))))
        return flight.GeneratorStream(schema, batches)

    @flight_errors
    def do_put(self, context, descriptor, reader, writer):
        calls.enter(context)
        message = _flight_sql(descriptor)
        if not message:
            raise QueryRefused("flight-lstm is read-only: DoPut only binds Flight SQL prepared statement parameters")
        reader = self.waits.of(context).reader(reader)
        writer.write(pa.py_buffer(self.flight_sql.do_put(*message, reader, caller(context))))

    @flight_errors
    def do_exchange(self, context, descriptor, reader, writer):
        """Row-wise SQL over a table `input` holding the client's batches: one batch back per batch sent."""
        calls.enter(context)
        if descriptor.descriptor_type != flight.DescriptorType.CMD or _flight_sql(descriptor):
            raise InvalidQuery("DoExchange takes a command descriptor holding SQL over the table `input`")
        query = Query("do_exchange", caller(context), failed=calls.failed(context))
        wait = self.waits.of(context)
        reader = wait.reader(reader)  # its reads wait on the client, under the deadline
        try:
            sql = text_of(descriptor.command, "the command")
            batches = (received(chunk.data) for chunk in reader if chunk.data is not None)
            gone, refused = liveness.cancelled(context), calls.refused(context)
            schema, results = self.service.exchange(sql, received_schema(_sent_schema(reader)), batches,
                                                    lambda: gone() or refused())
        except BaseException as e:
            query.end(e)
            raise
        schema, results = columns.result(schema, results)
        wait.write(writer.begin, schema)  # so do its writes: a client that sends but never reads holds them
        for batch in query.watch(results):
            wait.write(writer.write_batch, batch)

    @flight_errors
    def list_actions(self, context):
        calls.enter(context)
        return [*ACTIONS.items(), *FLIGHT_SQL_ACTIONS.items()]

    def _cancel(self, body: bytes, user: str | None) -> bytes:
        """CancelFlightInfo: the info's tickets name the DoGets to stop; none running is NOT_FOUND,
        as the spec asks for a query the server does not know."""
        try:
            info = flight.FlightInfo.deserialize(messages.unpack("CancelFlightInfoRequest", body).info)
        except (TypeError, ValueError, OSError):  # pyarrow's ArrowInvalid, or bytes that are no FlightInfo
            raise InvalidQuery("CancelFlightInfo needs a CancelFlightInfoRequest holding a FlightInfo") from None
        if not self.cancels.cancel(user, [e.ticket.ticket for e in info.endpoints]):
            raise NotFound("no query of this FlightInfo is running for you: it ended or never started")
        return messages.CancelFlightInfoResult(status=CANCELLED).SerializeToString()

    @flight_errors
    def do_action(self, context, action):
        if action.type != "health":  # health answers at once, small: an address at its limit still has it
            calls.enter(context)
        anonymous = self.auth_required and caller(context) is None
        if action.type == "health":
            # Open to load balancers and orchestrators; it tells an anonymous caller only readiness.
            body = {"status": self.service.health()["status"]} if anonymous else self.service.health()
        elif anonymous:
            raise flight.FlightUnauthenticatedError("authentication required: log in with a user name and password")
        elif action.type in FLIGHT_SQL_ACTIONS:
            bodies = self.flight_sql.do_action(action.type, action.body.to_pybytes(), caller(context))
            return [flight.Result(body) for body in bodies]
        elif action.type == "models":
            body = self.service.models()
        elif action.type == "explain":
            body = self.service.explain(text_of(action.body.to_pybytes(), "the command"), caller(context))
        elif action.type == "CancelFlightInfo":
            return [flight.Result(self._cancel(action.body.to_pybytes(), caller(context)))]
        else:
            known = ", ".join([*ACTIONS, *FLIGHT_SQL_ACTIONS])
            raise Unsupported(f"unknown action {action.type[:100]!r}; the actions are: {known}")
        return [flight.Result(json.dumps(body).encode())]


def _sent_schema(reader: calls.WatchedReader) -> pa.Schema:
    try:
        return reader.schema
    except OSError:  # pyarrow's "Client never sent a data message"
        raise InvalidQuery("DoExchange needs the schema of the batches you send, before them") from None


def _flight_sql(descriptor: flight.FlightDescriptor) -> tuple[str, bytes] | None:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        return None
    return messages.flight_sql_type(descriptor.command)
