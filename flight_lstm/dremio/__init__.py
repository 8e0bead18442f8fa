"""One Dremio client, shared by the Dremio source and the Dremio sink.

    client.py  the Flight client: cookies, auth (auth2 bearer or a personal access token), one retry
    errors.py  Dremio's failures as flight_lstm.errors, and ours recovered from DuckDB's stream errors
    uri.py     a dremio:// URI plus DREMIO_PASSWORD / DREMIO_TOKEN as the client's settings
    names.py   Dremio paths as SQL: quoting, splitting, the system schemas
"""
from flight_lstm.dremio.client import DremioClient
from flight_lstm.dremio.uri import DremioURI, parse_uri

__all__ = ["DremioClient", "DremioURI", "parse_uri"]
