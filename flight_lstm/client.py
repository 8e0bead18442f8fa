"""A small Flight client: SQL text in, an Arrow table out (what `flight-lstm query` uses)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight


def connect(server: str) -> flight.FlightClient:
    return flight.connect(server)


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
