"""The whole client side of flight-lstm with plain pyarrow.flight: SQL in, Arrow out.

    python examples/client.py --server grpc://127.0.0.1:8815 "SELECT id, sentiment(review) FROM reviews"
"""
import argparse
import json

import pyarrow as pa
import pyarrow.flight as flight


def run(server: str, sql: str) -> pa.Table:
    client = flight.connect(server)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(sql))
    return pa.concat_tables(client.do_get(e.ticket).read_all() for e in info.endpoints)


def datasets(server: str) -> list[str]:
    """Source tables and published views, as ListFlights announces them."""
    client = flight.connect(server)
    return ["/".join(p.decode() for p in info.descriptor.path) for info in client.list_flights()]


def health(server: str) -> dict:
    client = flight.connect(server)
    return json.loads(next(iter(client.do_action(flight.Action("health", b"")))).body.to_pybytes())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("sql")
    parser.add_argument("--server", default="grpc://127.0.0.1:8815")
    args = parser.parse_args()
    print(run(args.server, args.sql).to_pylist())
