"""A small Flight client: SQL text in, an Arrow table out (what `flight-lstm query` uses)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight


class _Bearer(flight.ClientMiddlewareFactory):
    """Sends the bearer token the server answered the login with, on every later call."""

    def __init__(self):
        self.header: tuple[bytes, bytes] | None = None

    def start_call(self, info):
        return _BearerHeader(self.header)


class _BearerHeader(flight.ClientMiddleware):
    def __init__(self, header):
        self.header = header

    def sending_headers(self):
        return {self.header[0].decode(): self.header[1].decode()} if self.header else {}


def connect(server: str, user: str | None = None, password: str | None = None,
            tls_root_certs: bytes | None = None) -> flight.FlightClient:
    """A client for `grpc://` or `grpc+tls://`; with a user, logged in (Basic once, then bearer)."""
    bearer = _Bearer()
    options = {"tls_root_certs": tls_root_certs} if tls_root_certs else {}
    client = flight.connect(server, middleware=[bearer], **options)
    if user is not None:
        bearer.header = client.authenticate_basic_token(user, password or "")
    return client


def query(client: flight.FlightClient, sql: str) -> pa.Table:
    """GetFlightInfo for the SQL, then DoGet on every endpoint."""
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql))
    tables = [client.do_get(endpoint.ticket).read_all() for endpoint in info.endpoints]
    return pa.concat_tables(tables) if tables else info.schema.empty_table()


def action(client: flight.FlightClient, name: str, body: str = ""):
    """A DoAction whose single result is JSON (health, models, explain)."""
    results = list(client.do_action(flight.Action(name, body.encode())))
    return json.loads(results[0].body.to_pybytes())


def short_message(error: Exception) -> str:
    """A Flight error's own message, without gRPC's debug context and server detail."""
    return str(error).split(". Detail:")[0].split(". gRPC client debug context")[0]
