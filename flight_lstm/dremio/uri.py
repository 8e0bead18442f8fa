"""A `dremio://` URI and the credentials from the environment, as the settings of one client.

    dremio://USER@HOST:32010   or   dremio+tls://USER@HOST:32010[?ca=/path/ca.pem]

plus `routing_tag`, `routing_queue`, `schema`, `routing_engine` (Dremio's session headers, by
their underscore names), `timeout` (seconds) and `system_tables=true` (let queries read, and
listings show, Dremio's `sys` and `INFORMATION_SCHEMA` tables, which are refused otherwise).

The password comes from DREMIO_PASSWORD, or a personal access token from DREMIO_TOKEN (sent as the
bearer, no login), or, for local trials only, from the URI itself. The URI may hold a password:
never log it, nor anything parsed from it but `describe()`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlparse

from flight_lstm.dremio.client import DEFAULT_PORT, DEFAULT_TIMEOUT, DremioClient
from flight_lstm.dremio.names import names_system_schema

SCHEMES = ("dremio", "dremio+tls")
# URI query options that become Dremio's session headers, by their exact (underscore) names.
HEADER_OPTIONS = ("routing_tag", "routing_queue", "schema", "routing_engine")


@dataclass(frozen=True)
class DremioURI:
    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None = field(repr=False)
    token: str | None = field(repr=False)
    ca: bytes | None
    headers: dict[str, str]
    timeout: float
    system_tables: bool  # whether queries may read Dremio's system tables

    def client(self) -> DremioClient:
        return DremioClient(self.host, self.port, user=self.user, password=self.password, token=self.token,
                            tls=self.tls, tls_root_certs=self.ca, headers=self.headers, timeout=self.timeout)


def parse_uri(uri: str) -> DremioURI:
    """The settings in `uri` and the environment; ValueError (never naming a secret) if unusable."""
    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES:
        raise ValueError("a Dremio source URI starts with dremio:// or dremio+tls://")
    tls = parsed.scheme == "dremio+tls"
    try:
        host, port = parsed.hostname, parsed.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("the Dremio URI has an invalid port") from None
    if not host:
        raise ValueError("a Dremio source needs a host: dremio://USER@HOST:32010")
    user = unquote(parsed.username) if parsed.username else None
    options = _options(parsed.query)
    ca = None
    if "ca" in options:
        if not tls:
            raise ValueError("the ca option needs a dremio+tls:// URI")
        try:
            with open(options["ca"], "rb") as f:
                ca = f.read()
        except OSError:
            raise ValueError(f"cannot read the CA file {options['ca']}") from None
    timeout = float(options["timeout"]) if options.get("timeout") else DEFAULT_TIMEOUT
    if options.get("system_tables", "false").lower() not in ("true", "false"):
        raise ValueError("the system_tables option is true or false")
    system_tables = options.get("system_tables", "false").lower() == "true"
    if options.get("schema") and not system_tables and names_system_schema(options["schema"].split(".") + [""]):
        raise ValueError("the schema option names a Dremio system schema; that needs system_tables=true")
    password, token = _credentials(parsed.password)
    if password is not None and not user:
        raise ValueError("a Dremio password needs the user in the URI: dremio://USER@HOST:32010")
    headers = {k: options[k] for k in HEADER_OPTIONS if options.get(k)}
    return DremioURI(host, port, tls, user, password, token, ca, headers, timeout, system_tables)


def _options(query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key.replace("-", "_") in HEADER_OPTIONS and key not in HEADER_OPTIONS:
            raise ValueError(f"Dremio reads the header {key.replace('-', '_')!r} with an underscore, not {key!r}")
        if key not in (*HEADER_OPTIONS, "ca", "timeout", "system_tables"):
            raise ValueError(f"unknown Dremio URI option {key!r}; known: ca, timeout, system_tables, "
                             f"{', '.join(HEADER_OPTIONS)}")
        options[key] = value
    return options


def _credentials(uri_password: str | None) -> tuple[str | None, str | None]:
    """(password, token): the URI's password, else DREMIO_TOKEN or DREMIO_PASSWORD (not both)."""
    env_password = os.environ.get("DREMIO_PASSWORD") or None
    env_token = os.environ.get("DREMIO_TOKEN") or None
    if uri_password is not None:
        return unquote(uri_password), None
    if env_token and env_password:
        raise ValueError("set one of DREMIO_PASSWORD and DREMIO_TOKEN, not both")
    if env_token:
        return None, env_token
    if env_password:
        return env_password, None
    raise ValueError("a Dremio source needs DREMIO_PASSWORD (with the user in the URI) or DREMIO_TOKEN")
