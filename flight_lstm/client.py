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
        try:
            bearer.header = client.authenticate_basic_token(user, password or "")
        except BaseException:
            client.close()
            raise
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


def connection_hint(server: str, error: Exception, tls_ca: bool) -> str | None:
    """What to do about a failed connection whose gRPC message names a TLS mismatch: which side
    failed, and the option that fixes it. None for any other error."""
    text = str(error)
    address = server.split("://", 1)[-1]
    if server.startswith("grpc+tls://"):
        if "wrong version number" in text or "WRONG_VERSION_NUMBER" in text:
            return f"the server at {address} does not speak TLS: connect with grpc://{address}"
        if "certificate verify failed" in text:
            if tls_ca:
                return ("this client could not verify the server's certificate with the --tls-ca given: "
                        "pass the CA that signed the server's certificate")
            return ("this client could not verify the server's certificate (signed by a CA it does not "
                    "trust, or self-signed): pass that CA with --tls-ca CA.pem")
        if "Peer name" in text:
            return f"the server's certificate does not name {address.rsplit(':', 1)[0]}: connect by a name it holds"
        if "Socket closed" in text:
            return (f"the server at {address} closed the TLS connection: it may require client certificates "
                    "(mutual TLS), which this client does not send")
    elif "Socket closed" in text or "Connection reset" in text:
        return (f"the server at {address} closed a plain connection: if it serves TLS, connect with "
                f"grpc+tls://{address} (and --tls-ca CA.pem if its certificate is private)")
    return None


def short_message(error: Exception) -> str:
    """A Flight error's own message, without gRPC's debug context and server detail."""
    return str(error).split(". Detail:")[0].split(". gRPC client debug context")[0]
