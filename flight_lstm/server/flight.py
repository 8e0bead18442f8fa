"""The Flight face: descriptors and tickets in, FlightInfo and record batch streams out.

A command descriptor carries SQL text; a path descriptor names a source table or published view.
The ticket is the SQL itself, so any replica can serve it and DoGet re-checks it like new input.
A command or ticket that is an Any-packed Flight SQL message goes to `FlightSQL` instead; DoExchange
runs row-wise SQL over the client's own batches.
"""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight

from flight_lstm.errors import InvalidQuery, QueryRefused, text_of
from flight_lstm.server import liveness
from flight_lstm.server.auth import BasicBearerAuth, NoOpAuthHandler, caller
from flight_lstm.server.errors import flight_errors, mapped
from flight_lstm.server.flight_sql import ACTIONS as FLIGHT_SQL_ACTIONS
from flight_lstm.server.flight_sql import FlightSQL
from flight_lstm.server.flight_sql_messages import flight_sql_type
from flight_lstm.server.telemetry import Query
from flight_lstm.service import Service

ACTIONS = {
    "health": "Readiness: status, source and published views (JSON).",
    "models": "The model registry: name, version, kind, training data and scores (JSON list).",
    "explain": "Body: SQL. How it splits: the scans a pushdown source runs and the local query (JSON).",
}


class FlightLSTMServer(flight.FlightServerBase):
    def __init__(self, service: Service, location: str = "grpc://127.0.0.1:8815", *,
                 auth: BasicBearerAuth | None = None, **kwargs):
        middleware = {liveness.KEY: liveness.Liveness()}
        if auth is not None:
            kwargs["auth_handler"], middleware["auth"] = NoOpAuthHandler(), auth
        super().__init__(location, middleware=middleware, **kwargs)
        self.service = service
        self.flight_sql = FlightSQL(service)
        self.auth_required = auth is not None

    def _ticket_sql(self, descriptor: flight.FlightDescriptor) -> str:
        if descriptor.descriptor_type == flight.DescriptorType.CMD:
            return text_of(descriptor.command, "the command")
        return self.service.dataset_sql(".".join(p.decode() if isinstance(p, bytes) else p for p in descriptor.path))

    def _info(self, context, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        try:
            message = _flight_sql(descriptor)
            if message:
                return self.flight_sql.flight_info(*message, descriptor, caller(context))
            sql = self._ticket_sql(descriptor)
            schema = self.service.schema(self.service.plan(sql))
        except BaseException as e:
            Query("get_flight_info").end(e)  # a query that fails planning ends here, not in DoGet
            raise
        endpoint = flight.FlightEndpoint(sql.encode(), [])
        return flight.FlightInfo(schema, descriptor, [endpoint], -1, -1)

    @flight_errors
    def list_flights(self, context, criteria):
        return [
            flight.FlightInfo(schema, flight.FlightDescriptor.for_path(name),
                              [flight.FlightEndpoint(sql.encode(), [])], -1, -1)
            for name, sql, schema in self.service.datasets()
        ]

    @flight_errors
    def get_flight_info(self, context, descriptor):
        return self._info(context, descriptor)

    @flight_errors
    def get_schema(self, context, descriptor):
        return flight.SchemaResult(self._info(context, descriptor).schema)

    @flight_errors
    def do_get(self, context, ticket):
        query = Query("do_get")
        try:
            message = flight_sql_type(ticket.ticket)
            if message:
                cancelled = liveness.cancelled(context)
                schema, batches, query.operators = self.flight_sql.do_get(*message, cancelled, caller(context))
            else:
                plan = self.service.plan(text_of(ticket.ticket, "the command"))
                (schema, batches), query.operators = self.service.stream(plan, liveness.cancelled(context)), plan.operators
        except BaseException as e:
            query.end(e)
            raise
        return flight.GeneratorStream(schema, mapped(query.watch(batches)))

    @flight_errors
    def do_put(self, context, descriptor, reader, writer):
        message = _flight_sql(descriptor)
        if not message:
            raise QueryRefused("flight-lstm is read-only: DoPut only binds Flight SQL prepared statement parameters")
        writer.write(pa.py_buffer(self.flight_sql.do_put(*message, reader, caller(context))))

    @flight_errors
    def do_exchange(self, context, descriptor, reader, writer):
        """Row-wise SQL over a table `input` holding the client's batches: one batch back per batch sent."""
        if descriptor.descriptor_type != flight.DescriptorType.CMD or _flight_sql(descriptor):
            raise InvalidQuery("DoExchange takes a command descriptor holding SQL over the table `input`")
        query = Query("do_exchange")
        try:
            batches = (chunk.data for chunk in reader if chunk.data is not None)
            schema, results = self.service.exchange(text_of(descriptor.command, "the command"), reader.schema, batches,
                                                    liveness.cancelled(context))
        except BaseException as e:
            query.end(e)
            raise
        writer.begin(schema)
        for batch in query.watch(results):
            writer.write_batch(batch)

    def list_actions(self, context):
        return [*ACTIONS.items(), *FLIGHT_SQL_ACTIONS.items()]

    @flight_errors
    def do_action(self, context, action):
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
            body = self.service.explain(text_of(action.body.to_pybytes(), "the command"))
        else:
            raise InvalidQuery(f"unknown action {action.type!r}; known: {', '.join(ACTIONS)}")
        return [flight.Result(json.dumps(body).encode())]


def _flight_sql(descriptor: flight.FlightDescriptor) -> tuple[str, bytes] | None:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        return None
    return flight_sql_type(descriptor.command)
