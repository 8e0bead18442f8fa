"""A thread-safe Arrow Flight client for one Dremio (port 32010): cookies, auth, one retry.

Authentication follows Dremio's auth2 mode (the Python client of dremio-hub/arrow-flight-client-
examples): Basic credentials once, then the returned `authorization: Bearer …` header on every call,
with the `SESSION_ID` cookie sent back. A personal access token goes straight out as the bearer,
with no handshake. Routing headers use Dremio's underscore names and count only when a session is
created, so they go on every call.

No secret (password, token) ever reaches a log line or an error message.
"""
from __future__ import annotations

import logging
import threading
from http.cookies import CookieError, SimpleCookie
from typing import Callable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.flight as flight

from flight_lstm.dremio.errors import dremio_message, refused, translate
from flight_lstm.errors import SourceUnavailable

log = logging.getLogger("flight_lstm.dremio")

DEFAULT_PORT = 32010
# Seconds allowed for a login or a GetFlightInfo (Dremio plans the query there). DoGet has no
# deadline: a long result may take long to stream, and a cancel reaches Dremio as a cancel.
DEFAULT_TIMEOUT = 120.0
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

    @property
    def uses_token(self) -> bool:
        """Whether it authenticates with a personal access token (which cannot be renewed)."""
        return self._pat is not None

    def describe(self) -> str:
        """`dremio[+tls]:USER@HOST:PORT`, or `token@` when no user is known; never a secret."""
        who = f"{self.user}@" if self.user else "token@"
        return f"{'dremio+tls' if self.tls else 'dremio'}:{who}{self.address}"

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
            ours = translate(e, self)
            if not isinstance(ours, SourceUnavailable):
                ours = SourceUnavailable(f"cannot log in to Dremio at {self.address}: {dremio_message(e)}")
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
            raise translate(e, self) from None
        bearer = self._current_bearer()
        try:
            return fn(self._options(bearer, timeout=timeout))
        except flight.FlightUnauthenticatedError:
            raise SourceUnavailable(refused(self)) from None
        except (pa.ArrowException, OSError) as e:
            raise translate(e, self) from None

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
                        raise translate(e, self, mid_stream=True) from None
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
