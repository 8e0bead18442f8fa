"""Dremio as the source, over its Arrow Flight endpoint (port 32010).

The planner pushes the table-reading part of a query down to Dremio as `plan.scans`, pairs of
(local name, SQL in Dremio's dialect). Each scan is one Flight query, GetFlightInfo (where Dremio
prepares and validates) then DoGet on its one endpoint, and is registered in the per-query DuckDB
connection under its local name as a streaming RecordBatchReader.

Authentication follows Dremio's auth2 mode (the Python client of dremio-hub/arrow-flight-client-
examples): Basic credentials once, then the returned `authorization: Bearer …` header on every call,
with the `SESSION_ID` cookie sent back. A personal access token from DREMIO_TOKEN goes straight out
as the bearer, with no handshake. Routing headers use Dremio's underscore names and count only when
a session is created, so they go on every call.

No secret (password, token, a URI holding a password) ever reaches a log line, an error message or
`describe()`.

Dremio's system tables (`sys`: every user's jobs and their SQL, reflections, options;
`INFORMATION_SCHEMA`: the whole catalog) are neither listed nor read, unless the operator sets
`?system_tables=true` on the source URI. The check is made on the text that is about to go to
Dremio (every scan, every column look-up), read back with sqlglot's Dremio parser: a path whose
folders (any part but the last, split at dots, compared as Dremio compares names, ignoring case) name
`sys` or `INFORMATION_SCHEMA` is refused with QueryRefused, before anything is sent.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import unicodedata
from http.cookies import CookieError, SimpleCookie
from typing import Callable, Iterator, TypeVar
from urllib.parse import parse_qsl, unquote, urlparse

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import sqlglot
from sqlglot import exp
from sqlglot.dialects.dremio import Dremio
from sqlglot.errors import ParseError, TokenError

from flight_lstm.errors import FlightLSTMError, InvalidQuery, QueryCancelled, QueryRefused, SourceUnavailable
from flight_lstm.plan import Plan
from flight_lstm.sources.base import Source

log = logging.getLogger("flight_lstm.sources.dremio")

DEFAULT_PORT = 32010
# URI query options that become Dremio's session headers, by their exact (underscore) names.
HEADER_OPTIONS = ("routing_tag", "routing_queue", "schema", "routing_engine")
# Seconds allowed for a login or a GetFlightInfo (Dremio plans the query there). DoGet has no
# deadline: a long result may take long to stream, and a cancel reaches Dremio as a cancel.
DEFAULT_TIMEOUT = 120.0
SYSTEM_SCHEMAS = ("information_schema", "sys")  # read or listed only with ?system_tables=true
CACHE_SECONDS = 30.0
_SESSION_GONE = "UserSession is not available"

T = TypeVar("T")


# --------------------------------------------------------------------------- cookies


class _CookieJar:
    """The cookies Dremio set (SESSION_ID), shared by every call of one client."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cookies: dict[str, str] = {}

    def header(self) -> str | None:
        with self._lock:
            return "; ".join(f"{k}={v}" for k, v in self._cookies.items()) or None

    def store(self, set_cookie_values) -> None:
        for raw in set_cookie_values:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                parsed = SimpleCookie(text)
            except CookieError:
                continue
            with self._lock:
                for name, morsel in parsed.items():
                    self._cookies[name] = morsel.value

    def clear(self) -> None:
        with self._lock:
            self._cookies.clear()

    def get(self, name: str) -> str | None:
        with self._lock:
            return self._cookies.get(name)


class _CookieMiddleware(flight.ClientMiddleware):
    def __init__(self, jar: _CookieJar):
        self.jar = jar

    def sending_headers(self):
        cookie = self.jar.header()
        return {"cookie": cookie} if cookie else {}

    def received_headers(self, headers):
        for key, values in headers.items():
            if key.lower() == "set-cookie":
                self.jar.store(values)


class _CookieMiddlewareFactory(flight.ClientMiddlewareFactory):
    def __init__(self, jar: _CookieJar):
        self.jar = jar

    def start_call(self, info):
        return _CookieMiddleware(self.jar)


# --------------------------------------------------------------------------- the client


class DremioClient:
    """A thread-safe Flight client for one Dremio: login once, reuse the bearer and the session.

    Every public method raises only `flight_lstm.errors` classes, with Dremio named as the origin.
    """

    def __init__(
        self,
        host: str,
        port: int = DEFAULT_PORT,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: bool = False,
        tls_root_certs: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ):
        if (password is None) == (token is None):
            raise ValueError("a Dremio client needs exactly one of a password and a token")
        if password is not None and not user:
            raise ValueError("a Dremio password needs a user name")
        self.host, self.port, self.user, self.tls = host, port, user, tls
        self.address = f"{host}:{port}"
        self.timeout = timeout
        self._password = password
        self._pat = token
        self._extra = [(k.encode(), str(v).encode()) for k, v in (headers or {}).items()]
        self._jar = _CookieJar()
        self._lock = threading.Lock()
        self._bearer: bytes | None = None if token is None else b"Bearer " + token.encode()
        kwargs = {
            "middleware": [_CookieMiddlewareFactory(self._jar)],
            # gRPC backs off up to 120 s between reconnects; keep a restarted Dremio reachable soon.
            "generic_options": [("grpc.initial_reconnect_backoff_ms", 200),
                                ("grpc.min_reconnect_backoff_ms", 200),
                                ("grpc.max_reconnect_backoff_ms", 2000)],
        }
        if tls and tls_root_certs:
            kwargs["tls_root_certs"] = tls_root_certs
        scheme = "grpc+tls" if tls else "grpc+tcp"
        self._flight = flight.FlightClient(f"{scheme}://{_host_for_uri(host)}:{port}", **kwargs)

    # -- auth

    def _options(self, bearer: bytes | None, *, timeout: float | None) -> flight.FlightCallOptions:
        headers = list(self._extra)
        if bearer is not None:
            headers.append((b"authorization", bearer))
        return flight.FlightCallOptions(headers=headers, timeout=timeout)

    def _login(self) -> bytes:
        """Basic credentials once (the caller holds the lock); Dremio answers with the bearer.
        A login starts a fresh session: a stale cookie would get the login itself refused."""
        self._jar.clear()
        try:
            key, value = self._flight.authenticate_basic_token(
                self.user, self._password, self._options(None, timeout=self.timeout)
            )
        except flight.FlightUnauthenticatedError:
            log.warning("Dremio at %s refused the credentials of user %s", self.address, self.user)
            raise SourceUnavailable(f"Dremio refused the credentials of user {self.user}") from None
        except (pa.ArrowException, OSError) as e:  # nothing here is the fault of a query
            ours = _translate(e, self)
            if not isinstance(ours, SourceUnavailable):
                ours = SourceUnavailable(f"cannot log in to Dremio at {self.address}: {_dremio_message(e)}")
            raise ours from None
        if (key.decode() if isinstance(key, bytes) else key).lower() != "authorization" or not value:
            raise SourceUnavailable(f"Dremio at {self.address} returned no bearer token at login")
        log.info("logged in to Dremio at %s as %s", self.address, self.user)
        return value if isinstance(value, bytes) else value.encode()

    def _current_bearer(self) -> bytes:
        with self._lock:
            if self._bearer is None:
                self._bearer = self._login()
            return self._bearer

    def _recover(self, used: bytes, error: flight.FlightUnauthenticatedError) -> None:
        """After UNAUTHENTICATED: a lost session drops the cookie; an expired token logs in again
        (once, however many threads saw it expire)."""
        with self._lock:
            if _SESSION_GONE.lower() in str(error).lower():
                self._jar.clear()
                return
            if self._pat is not None:  # a PAT cannot be renewed; a fresh session is all there is to try
                self._jar.clear()
                return
            if self._bearer == used:
                log.info("Dremio at %s no longer accepts the token of user %s; logging in again",
                         self.address, self.user)
                self._bearer = None
                self._bearer = self._login()

    def call(self, fn: Callable[[flight.FlightCallOptions], T], *, timeout: float | None = None) -> T:
        """Run `fn(options)` with the bearer and headers, re-authenticating once if refused."""
        bearer = self._current_bearer()
        try:
            return fn(self._options(bearer, timeout=timeout))
        except flight.FlightUnauthenticatedError as e:
            self._recover(bearer, e)
        except (pa.ArrowException, OSError) as e:
            raise _translate(e, self) from None
        bearer = self._current_bearer()
        try:
            return fn(self._options(bearer, timeout=timeout))
        except flight.FlightUnauthenticatedError:
            raise SourceUnavailable(_refused(self)) from None
        except (pa.ArrowException, OSError) as e:
            raise _translate(e, self) from None

    # -- queries

    def flight_info(self, sql: str) -> flight.FlightInfo:
        """Dremio prepares (parses, validates, plans) the statement here; nothing runs yet."""
        descriptor = flight.FlightDescriptor.for_command(sql.encode())
        return self.call(lambda o: self._flight.get_flight_info(descriptor, o), timeout=self.timeout)

    def schema(self, sql: str) -> pa.Schema:
        """The result schema of `sql`, from GetFlightInfo only (no DoGet, so no job runs)."""
        return self.flight_info(sql).schema

    def query(self, sql: str) -> pa.RecordBatchReader:
        """Prepare now (errors in the SQL surface here); rows stream on demand as the reader is
        read, through one DoGet per endpoint, never held whole."""
        info = self.flight_info(sql)
        return self.reader(info)

    def reader(self, info: flight.FlightInfo) -> pa.RecordBatchReader:
        schema = info.schema
        return pa.RecordBatchReader.from_batches(schema, self._stream(info, schema))

    def _stream(self, info: flight.FlightInfo, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        for endpoint in info.endpoints:
            # Dremio's endpoint has no location: the ticket is redeemed on this same connection.
            stream = self.call(lambda o: self._flight.do_get(endpoint.ticket, o))
            try:
                while True:
                    try:
                        chunk = stream.read_chunk()
                    except StopIteration:
                        break
                    except (pa.ArrowException, OSError) as e:
                        raise _translate(e, self, mid_stream=True) from None
                    if chunk.data is None:
                        continue
                    yield _conform(chunk.data, schema)
            finally:
                # Reached early only when the consumer stops reading (LIMIT, an error, a closed
                # connection): tell Dremio to stop the job rather than stream to nobody.
                try:
                    stream.cancel()
                except Exception:  # noqa: BLE001 - best effort after the fact
                    pass

    def close(self) -> None:
        self._flight.close()


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """DoGet's batches carry the FlightInfo schema; differing field metadata is not an error."""
    if batch.schema.equals(schema, check_metadata=False):
        return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
    try:
        return batch.select(schema.names).cast(schema)
    except (pa.ArrowException, KeyError):
        raise SourceUnavailable(
            "Dremio: the streamed result does not match the schema announced for it"
        ) from None


def _host_for_uri(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _refused(client: DremioClient) -> str:
    if client._pat is not None:
        return f"Dremio refused the personal access token{' of user ' + client.user if client.user else ''}"
    return f"Dremio refused the credentials of user {client.user}"


def _dremio_message(error: BaseException) -> str:
    """Dremio's own words: one line, without gRPC's debug context or a server-side traceback."""
    text = str(error)
    for cut in (". Detail:", ". gRPC client debug context", "\nDetail:", "\nTraceback", "Traceback (most"):
        text = text.split(cut)[0]
    text = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return re.sub(r"^Flight returned \w+ error, with message: ", "", text)


def _translate(error: BaseException, client: DremioClient, *, mid_stream: bool = False) -> FlightLSTMError:
    """A pyarrow/gRPC failure as one of our errors, Dremio named as the origin."""
    where = " while streaming the result" if mid_stream else ""
    msg = _dremio_message(error)
    if isinstance(error, flight.FlightUnauthenticatedError):
        return SourceUnavailable(_refused(client))
    if isinstance(error, flight.FlightUnauthorizedError):
        return QueryRefused(f"Dremio: {msg}")
    if isinstance(error, flight.FlightCancelledError):
        return QueryCancelled(f"Dremio cancelled the query{where}: {msg}")
    if isinstance(error, flight.FlightTimedOutError):
        return SourceUnavailable(f"Dremio at {client.address} timed out{where}: {msg}")
    if isinstance(error, (flight.FlightUnavailableError, OSError)):
        return SourceUnavailable(f"Dremio at {client.address} is unavailable{where}: {msg}")
    if isinstance(error, pa.ArrowInvalid):  # INVALID_ARGUMENT: Dremio's PARSE or VALIDATION errors
        return InvalidQuery(f"Dremio: {msg}")
    if isinstance(error, pa.ArrowNotImplementedError):
        return InvalidQuery(f"Dremio does not support this: {msg}")
    if mid_stream:
        return SourceUnavailable(f"Dremio failed{where}: {msg}")
    # INTERNAL and the rest: Dremio ran into something running this query; retrying will not help.
    return InvalidQuery(f"Dremio failed the query: {msg}")


# DuckDB reports a failure inside a registered reader as InvalidInputException("reading the stream
# registered as '_scan_0' failed: … Python exception: Traceback … SourceUnavailable: message").
_OURS = {c.__name__: c for c in (InvalidQuery, QueryRefused, SourceUnavailable, QueryCancelled)}
_STREAM_FAILURE = re.compile(
    r"^(?:[\w.]*\.)?(" + "|".join(_OURS) + r"): (.*)$", re.M
)


def stream_error(error: BaseException) -> FlightLSTMError | None:
    """Our error behind a failure raised while DuckDB read a source's stream, else None.

    DuckDB keeps only the text of an exception raised inside a scanned RecordBatchReader. It
    raises duckdb.InvalidInputException, which the engine would take for bad SQL, when the failure
    comes while the query starts. It raises OSError when the failure comes while the engine
    iterates `to_arrow_reader()`. This recovers the original from either.
    """
    if not isinstance(error, (duckdb.Error, pa.ArrowException, OSError)):
        return None
    if "reading the stream registered as" not in str(error):
        return None
    found = _STREAM_FAILURE.findall(str(error))
    if not found:
        return None
    kind, message = found[-1]
    return _OURS[kind](message.strip())


# --------------------------------------------------------------------------- the source


class DremioSource(Source):
    scheme = "dremio"
    pushdown_dialect = "dremio"

    def __init__(self, client: DremioClient, *, system_tables: bool = False):
        self.client = client
        self.system_tables = system_tables  # whether queries may read Dremio's system tables
        self._cache: dict = {}

    @classmethod
    def from_uri(cls, uri: str) -> "DremioSource":
        """`dremio://USER@HOST:32010` or `dremio+tls://USER@HOST:32010[?ca=/path/ca.pem]`, plus
        `routing_tag`, `routing_queue`, `schema`, `routing_engine` and `timeout` (seconds) options,
        and `system_tables=true` to let queries read (and listings show) Dremio's `sys` and
        `INFORMATION_SCHEMA` tables, which are refused otherwise.

        The password comes from DREMIO_PASSWORD, or a personal access token from DREMIO_TOKEN (sent
        as the bearer, no login), or, for local trials only, from the URI itself.
        """
        parsed = urlparse(uri)
        if parsed.scheme not in ("dremio", "dremio+tls"):
            raise ValueError("a Dremio source URI starts with dremio:// or dremio+tls://")
        tls = parsed.scheme == "dremio+tls"
        try:
            host, port = parsed.hostname, parsed.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("the Dremio URI has an invalid port") from None
        if not host:
            raise ValueError("a Dremio source needs a host: dremio://USER@HOST:32010")
        user = unquote(parsed.username) if parsed.username else None
        options: dict[str, str] = {}
        for key, value in parse_qsl(parsed.query, keep_blank_values=True):
            if key.replace("-", "_") in HEADER_OPTIONS and key not in HEADER_OPTIONS:
                raise ValueError(f"Dremio reads the header {key.replace('-', '_')!r} with an underscore, not {key!r}")
            if key not in (*HEADER_OPTIONS, "ca", "timeout", "system_tables"):
                raise ValueError(f"unknown Dremio URI option {key!r}; known: ca, timeout, system_tables, "
                                 f"{', '.join(HEADER_OPTIONS)}")
            options[key] = value
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

        uri_password = unquote(parsed.password) if parsed.password is not None else None
        env_password = os.environ.get("DREMIO_PASSWORD") or None
        env_token = os.environ.get("DREMIO_TOKEN") or None
        password = token = None
        if uri_password is not None:
            password = uri_password
        elif env_token and env_password:
            raise ValueError("set one of DREMIO_PASSWORD and DREMIO_TOKEN, not both")
        elif env_token:
            token = env_token
        elif env_password:
            password = env_password
        else:
            raise ValueError("a Dremio source needs DREMIO_PASSWORD (with the user in the URI) or DREMIO_TOKEN")
        if password is not None and not user:
            raise ValueError("a Dremio password needs the user in the URI: dremio://USER@HOST:32010")
        headers = {k: options[k] for k in HEADER_OPTIONS if options.get(k)}
        return cls(DremioClient(host, port, user=user, password=password, token=token, tls=tls,
                                tls_root_certs=ca, headers=headers, timeout=timeout), system_tables=system_tables)

    # -- the Source interface

    def attach(self, con: duckdb.DuckDBPyConnection, plan: Plan | None, *, schema_only: bool = False) -> None:
        """Register each of `plan.scans` in `con` under its local name: a reader that streams
        Dremio's result as DuckDB pulls it (DoGet starts on the first pull), or with `schema_only`
        an empty table of the schema Dremio announced (GetFlightInfo only, no job runs).

        Every scan is prepared before any is registered, so bad SQL fails here, as InvalidQuery.
        A registered reader can be scanned once only: the local query must read each scan once.
        """
        if plan is None:
            return
        for _, sql in plan.scans:
            self._check(sql)
        infos = [(name, self.client.flight_info(sql)) for name, sql in plan.scans]
        for name, info in infos:
            data = info.schema.empty_table() if schema_only else self.client.reader(info)
            con.register(name, data)

    def tables(self) -> list[str]:
        """Dremio's tables and views as dotted paths, parts quoted where Dremio needs it."""
        return self._cached(("tables",), self._list_tables)

    def _list_tables(self) -> list[str]:
        rows = self.client.query(
            'SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM INFORMATION_SCHEMA."TABLES" '
            "ORDER BY TABLE_SCHEMA, TABLE_NAME"
        ).read_all().to_pylist()
        # TABLE_SCHEMA joins the path with bare dots ("Samples.samples.dremio.com"), so a part that
        # holds dots is told apart by the folders SCHEMATA lists (every level is a schema there).
        try:
            known = {
                r["SCHEMA_NAME"].lower()
                for r in self.client.query("SELECT SCHEMA_NAME FROM INFORMATION_SCHEMA.SCHEMATA").read_all().to_pylist()
            }
        except InvalidQuery:
            known = set()
        names = []
        for row in rows:
            parts = split_schema(row["TABLE_SCHEMA"], known)
            system = row.get("TABLE_TYPE") == "SYSTEM_TABLE" or names_system_schema([*parts, row["TABLE_NAME"]])
            if system and not self.system_tables:
                continue
            names.append(".".join(quote_part(p) for p in (*parts, row["TABLE_NAME"])))
        return names

    def columns(self, table: str) -> list[str]:
        """From the schema Dremio announces for `SELECT *` (GetFlightInfo only, cached briefly)."""
        sql = f"SELECT * FROM {table}"
        self._check(sql)
        return self._cached(("columns", table), lambda: self.client.schema(sql).names)

    def _check(self, sql: str) -> None:
        """Refuse, before it is sent, a statement that is not one query reading Dremio tables by
        their paths, or that reads a system table (without ?system_tables=true)."""
        try:
            statements = [s for s in sqlglot.parse(sql, read="dremio") if s is not None]
        except (ParseError, TokenError, RecursionError):
            statements = []
        if len(statements) != 1 or not isinstance(statements[0], exp.Query):
            raise QueryRefused("only one query is sent to Dremio at a time; this text is not one")
        tree = statements[0]
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            if not isinstance(table.this, (exp.Identifier, exp.Dot)) or any(
                    not isinstance(p, exp.Identifier) for p in table.this.find_all(exp.Expression)
                    if not isinstance(p, exp.Dot)):
                raise QueryRefused("a table function is not sent to Dremio; name a table or view")
            parts = [p.name for p in table.parts]
            if len(parts) == 1 and parts[0].lower() in ctes:
                continue
            if not self.system_tables and names_system_schema(parts):
                shown = ".".join(quote_part(p) for p in parts)[:120]
                raise QueryRefused(f"{shown} is a Dremio system table: queries may not read Dremio's sys "
                                   "or INFORMATION_SCHEMA unless the source URI sets system_tables=true")

    def translate_error(self, error: BaseException) -> FlightLSTMError | None:
        return stream_error(error)

    def _cached(self, key, compute):
        """Metadata is asked for on every plan; remember it for CACHE_SECONDS."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] > CACHE_SECONDS:
            hit = self._cache[key] = (now, compute())
        return hit[1]

    def describe(self) -> str:
        c = self.client
        who = f"{c.user}@" if c.user else "token@"
        return f"{'dremio+tls' if c.tls else 'dremio'}:{who}{c.address}"

    # -- direct use

    def schema(self, sql: str) -> pa.Schema:
        return self.client.schema(sql)

    def query(self, sql: str) -> pa.RecordBatchReader:
        return self.client.query(sql)


def names_system_schema(parts: list[str]) -> bool:
    """Whether a Dremio path lies in a system schema: any part but the last, split at dots (Dremio
    may read `"sys.jobs"` as a path), is `sys` or `INFORMATION_SCHEMA` as Dremio matches names,
    ignoring case the way Java's equalsIgnoreCase does (`ſys` and `ınformation_schema` count)."""
    pieces = [piece for part in parts for piece in part.split(".")]
    return any(_fold(p) in SYSTEM_SCHEMAS or _fold(p.upper()) in SYSTEM_SCHEMAS for p in pieces[:-1])


def _fold(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


_SAFE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEYWORDS = {k.upper() for k in Dremio.Tokenizer.KEYWORDS if " " not in k} | {
    "USER", "TABLE", "SCHEMA", "VALUE", "VALUES", "DATE", "TIME", "TIMESTAMP", "YEAR", "MONTH", "DAY",
    "HOUR", "MINUTE", "SECOND", "POSITION", "LANGUAGE", "SYSTEM", "SESSION", "CURRENT", "RESULT", "TABLES",
}


def quote_part(part: str) -> str:
    """One path part as Dremio SQL: bare when safe, else double-quoted (quoting never changes
    what Dremio matches, as its matching ignores case)."""
    if _SAFE.match(part) and part.upper() not in _KEYWORDS:
        return part
    return '"' + part.replace('"', '""') + '"'


def split_schema(schema: str, known: set[str]) -> list[str]:
    """Split a dot-joined TABLE_SCHEMA into its parts, using the schema names that exist
    (lower-cased) to keep dots that belong inside a part; plain dot splitting otherwise."""
    pieces = schema.split(".")
    if not known or len(pieces) == 1:
        return pieces
    # The finest split whose every prefix is a schema Dremio lists: "Samples.samples.dremio.com"
    # becomes Samples + samples.dremio.com when "Samples" is a schema and "Samples.samples" is not.
    best: dict[int, list[str]] = {0: []}
    for end in range(1, len(pieces) + 1):
        for start in range(end):
            if start not in best:
                continue
            candidate = [*best[start], ".".join(pieces[start:end])]
            if ".".join(candidate).lower() in known and (end not in best or len(candidate) > len(best[end])):
                best[end] = candidate
    return best.get(len(pieces), pieces)
