"""A stand-in for Dremio's Arrow Flight endpoint, backed by DuckDB, for tests.

It follows what /work/shared/notes/dremio-flight.md records of Dremio OSS 25.2 (auth2 mode, the
session service, GetFlightInfo + DoGet); it is a test double, so server-side tracebacks in error
messages are fine. Dremio paths of any length and quoting are mapped to DuckDB table names.

Writes (§4): CTAS, INSERT and DELETE run through the same GetFlightInfo (validated, nothing runs)
+ DoGet (the statement runs, each one on its own, as Dremio has no transactions), answering one
row of one BIGINT column `Records`. A CTAS lists its new table as Dremio does; still no DoPut.

    standin = DremioStandin(con, {'"my space"."folder.with.dots".sub.reviews': "reviews"},
                            users={"alice": "pw"}, pats={"pat-1": "alice"})
    standin.start()           # grpc://127.0.0.1:<port>
    ... standin.sql, standin.handshakes, standin.sessions, standin.calls ...
    standin.expire_tokens(); standin.fail_after = 2; standin.fail_with = ...; standin.stop(); standin.start()
"""
from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.flight as flight
import sqlglot
from sqlglot import exp

SESSION_HEADERS = ("routing_tag", "routing_queue", "schema", "quoting", "routing_engine", "supports_complex_types")
INFO_TABLES = "_dremio_information_schema_tables"
INFO_SCHEMATA = "_dremio_information_schema_schemata"
RECORDS = pa.schema([pa.field("Records", pa.int64())])  # what a write answers
WRITES = (exp.Insert, exp.Create, exp.Delete)


def parse_path(path: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A Dremio path, from SQL text ('"my space".folder.t') or from its parts."""
    if isinstance(path, (tuple, list)):
        return tuple(path)
    table = sqlglot.parse_one(f"SELECT * FROM {path}", read="dremio").find(exp.Table)
    return tuple(p.name for p in table.parts)


def _key(parts) -> tuple[str, ...]:
    return tuple(p.lower() for p in parts)  # Dremio matches identifiers without regard to case


@dataclass
class Call:
    """One call as it reached the stand-in."""

    method: str
    headers: dict[str, list[str]]
    user: str | None = None
    bearer: str | None = None
    session: str | None = None


@dataclass
class Session:
    user: str
    headers: dict[str, str] = field(default_factory=dict)  # the session headers, as at creation


class _Noop(flight.ServerAuthHandler):
    """Lets Handshake through; the real checks happen in the middleware, as auth2 does."""

    def authenticate(self, outgoing, incoming):
        pass

    def is_valid(self, token):
        return ""


class _Middleware(flight.ServerMiddleware):
    def __init__(self, call: Call, reply: dict[str, str]):
        self.call, self.reply = call, reply

    def sending_headers(self):
        return self.reply


class _Factory(flight.ServerMiddlewareFactory):
    def __init__(self, standin: "DremioStandin"):
        self.standin = standin

    def start_call(self, info, headers):
        return self.standin._admit(info, headers)


class _Server(flight.FlightServerBase):
    def __init__(self, standin: "DremioStandin", location: str, **kwargs):
        super().__init__(location, auth_handler=_Noop(), middleware={"dremio": _Factory(standin)}, **kwargs)
        self.standin = standin

    def get_flight_info(self, context, descriptor):
        return self.standin._flight_info(context, descriptor)

    def get_schema(self, context, descriptor):
        raise NotImplementedError("GetSchema is not supported")

    def do_get(self, context, ticket):
        return self.standin._do_get(context, ticket)

    def list_flights(self, context, criteria):
        raise NotImplementedError("ListFlights is not supported")

    def do_put(self, context, descriptor, reader, writer):
        raise NotImplementedError("DoPut is not supported")

    def do_action(self, context, action):
        raise NotImplementedError(f"DoAction {action.type} is not supported")

    def list_actions(self, context):
        return []


class DremioStandin:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        tables: dict,
        *,
        users: dict[str, str],
        pats: dict[str, str] | None = None,
        batch_rows: int = 4096,
        tls: tuple[bytes, bytes] | None = None,
        host: str = "127.0.0.1",
    ):
        """`tables` maps a Dremio path (SQL text or parts) to a DuckDB table name in `con`;
        `pats` maps a personal access token to its user; `tls` is (cert PEM, key PEM)."""
        self.con = con
        self.paths = {_key(parse_path(p)): name for p, name in tables.items()}
        self.shown = {_key(parse_path(p)): parse_path(p) for p in tables}
        self.users, self.pats = dict(users), dict(pats or {})
        self.batch_rows, self.tls, self.host = batch_rows, tls, host
        self.port = 0
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        # What reached it.
        self.calls: list[Call] = []
        self.sql: list[str] = []  # each GetFlightInfo command, as sent
        self.handshakes = 0
        self.do_gets = 0
        self.open_streams = 0  # DoGets still running (a cancelled one ends within a batch or two)
        self.tokens: dict[str, str] = {}  # bearer tokens issued and still valid -> user
        self.sessions: dict[str, Session] = {}
        # Ticket handle -> (DuckDB SQL, schema, the path a CTAS creates).
        self.statements: dict[str, tuple[str, pa.Schema, tuple | None]] = {}
        self._writing = threading.Lock()  # one write at a time, each on its own
        # Switches.
        self.fail_after: int | None = None  # batches a DoGet sends before failing with `fail_with()`
        self.fail_with = lambda: flight.FlightInternalError("ExecutionSetupException: a fragment failed")
        self.pause: threading.Event | None = None  # set by the test; a DoGet waits on it after one batch
        self.streaming = threading.Event()  # set once a DoGet has sent its first batch
        self._stopping = False
        self._info_tables()

    # -- lifecycle

    @property
    def location(self) -> str:
        return f"{'grpc+tls' if self.tls else 'grpc'}://{self.host}:{self.port}"

    def start(self) -> "DremioStandin":
        """Serve on a loopback port (the same one again after `stop`)."""
        kwargs = {"tls_certificates": [flight.CertKeyPair(*self.tls)]} if self.tls else {}
        self._stopping = False
        self._server = _Server(self, f"{'grpc+tls' if self.tls else 'grpc'}://{self.host}:{self.port}", **kwargs)
        self.port = self._server.port
        threading.Thread(target=self._server.serve, daemon=True).start()
        return self

    def stop(self, *, forget_sessions: bool = True) -> None:
        """Go away: streams in flight fail with UNAVAILABLE, the port closes. Like a restarted
        Dremio, the sessions are forgotten (tokens persist, as Dremio keeps them in its store)."""
        self._stopping = True
        if self.pause is not None:
            self.pause.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if forget_sessions:
            with self._lock:
                self.sessions.clear()

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    # -- auth2 and sessions, on every call

    def _admit(self, info, headers) -> _Middleware:
        h = {k.lower(): [v.decode() if isinstance(v, bytes) else v for v in vs] for k, vs in headers.items()}
        method = info.method.name if hasattr(info.method, "name") else str(info.method)
        call = Call(method=method, headers=h)
        with self._lock:
            self.calls.append(call)
        if self._stopping:
            raise flight.FlightUnavailableError("Dremio is shutting down")
        reply: dict[str, str] = {}
        auth = (h.get("authorization") or [""])[0]
        if auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
            call.bearer = token
            with self._lock:
                user = self.tokens.get(token) or self.pats.get(token)
            if user is None:
                raise flight.FlightUnauthenticatedError("Unable to authenticate user: invalid or expired token")
        elif auth.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(auth[len("Basic "):]).decode().partition(":")
            except ValueError:
                raise flight.FlightUnauthenticatedError("Unable to authenticate user, exception: malformed") from None
            # On Software a PAT may stand in for the password.
            if self.users.get(user) != password and self.pats.get(password) != user:
                raise flight.FlightUnauthenticatedError(
                    f"Unable to authenticate user {user}, exception: Login failed: Invalid username or password"
                )
            token = secrets.token_urlsafe(16)
            with self._lock:
                self.tokens[token] = user
                if method.upper() == "HANDSHAKE":
                    self.handshakes += 1
            reply["authorization"] = f"Bearer {token}"
        else:
            raise flight.FlightUnauthenticatedError("Unable to authenticate user: no credentials")
        call.user = user

        session_id = _cookie(h.get("cookie", []), "SESSION_ID")
        with self._lock:
            if session_id is not None:
                if session_id not in self.sessions:
                    raise flight.FlightUnauthenticatedError("UserSession is not available in the cache")
            else:
                session_id = secrets.token_hex(8)
                self.sessions[session_id] = Session(
                    user, {k: h[k][0] for k in SESSION_HEADERS if h.get(k)}
                )
                reply["set-cookie"] = f"SESSION_ID={session_id}"
        call.session = session_id
        return _Middleware(call, reply)

    # -- queries

    def _flight_info(self, context, descriptor) -> flight.FlightInfo:
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise NotImplementedError("path descriptors are not supported")
        sql = descriptor.command.decode()
        session = self.sessions.get(context.get_middleware("dremio").call.session)
        with self._lock:
            self.sql.append(sql)
        duck, write, created = self._to_duckdb(sql, session)
        cur = self.con.cursor()
        try:
            if write:
                cur.execute(f"EXPLAIN {duck}")  # binds (tables, columns, types) without running
                schema = RECORDS
            else:
                schema = cur.sql(f"SELECT * FROM ({duck}) AS q LIMIT 0").to_arrow_table().schema
        except duckdb.Error as e:
            raise pa.ArrowInvalid(f"VALIDATION ERROR: {str(e).splitlines()[0]}") from None
        finally:
            cur.close()
        handle = str(next(self._ids))
        with self._lock:
            self.statements[handle] = (duck, schema, created)
        ticket = flight.Ticket(json.dumps({"query": sql, "handle": handle}).encode())
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    def _to_duckdb(self, sql: str, session: Session | None) -> tuple[str, bool, tuple | None]:
        """The statement in DuckDB's SQL, whether it writes, and the path a CTAS creates."""
        try:
            tree = sqlglot.parse_one(sql, read="dremio")
        except sqlglot.errors.ParseError as e:
            raise pa.ArrowInvalid(f"PARSE ERROR: {str(e).splitlines()[0]}") from None
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        default = _key(parse_path(session.headers["schema"])) if session and session.headers.get("schema") else ()
        created = None
        if isinstance(tree, exp.Create):
            if tree.kind != "TABLE" or not isinstance(tree.expression, exp.Query):
                raise NotImplementedError("the stand-in runs CREATE TABLE ... AS SELECT only")
            target = tree.this if isinstance(tree.this, exp.Table) else tree.this.this
            created = (*default, *(p.name for p in target.parts))
            if _key(created) in self.paths:
                raise pa.ArrowInvalid(f"VALIDATION ERROR: A table or view with given name "
                                      f"[{'.'.join(created)}] already exists")
            target.replace(exp.Table(this=exp.to_identifier("/".join(created), quoted=True)))
        for table in list(tree.find_all(exp.Table)):
            parts = tuple(p.name for p in table.parts)
            if (len(parts) == 1 and parts[0].lower() in ctes) or (created and parts == ("/".join(created),)):
                continue
            name = self.paths.get(_key((*default, *parts))) or self.paths.get(_key(parts))
            if name is None:
                raise pa.ArrowInvalid(f"VALIDATION ERROR: Table '{'.'.join(parts)}' not found")
            new = exp.Table(this=exp.to_identifier(name, quoted=True))  # a DuckDB name may hold dots
            alias = table.args.get("alias")
            if alias is not None:
                new.set("alias", alias)
            table.replace(new)
        return tree.sql(dialect="duckdb"), isinstance(tree, WRITES), created

    def _do_get(self, context, ticket) -> flight.FlightDataStream:
        handle = json.loads(ticket.ticket)["handle"]
        with self._lock:
            self.do_gets += 1
            duck, schema, created = self.statements[handle]
        if schema is RECORDS:  # a write
            return flight.RecordBatchStream(self._write(duck, created))
        cur = self.con.cursor()
        reader = cur.sql(duck).to_arrow_reader(self.batch_rows)

        def batches():
            with self._lock:
                self.open_streams += 1
            try:
                for i, batch in enumerate(reader):
                    if i == 1:  # the first batch has gone out
                        self.streaming.set()
                        if self.pause is not None:
                            self.pause.wait(30)
                    if self._stopping:
                        raise flight.FlightUnavailableError("Dremio is shutting down")
                    if self.fail_after is not None and i >= self.fail_after:
                        raise self.fail_with()
                    yield batch
            finally:
                cur.close()
                with self._lock:
                    self.open_streams -= 1

        return flight.GeneratorStream(schema, batches())

    def _write(self, duck: str, created: tuple | None) -> pa.Table:
        """Run one write to its end, committed on its own; a new table joins the catalog."""
        with self._writing:
            cur = self.con.cursor()
            try:
                records = cur.execute(duck).fetchone()[0]
            except duckdb.Error as e:
                raise flight.FlightInternalError(f"DML failed: {str(e).splitlines()[0]}") from None
            finally:
                cur.close()
            if created is not None:
                with self._lock:
                    self.paths[_key(created)] = "/".join(created)
                    self.shown[_key(created)] = created
                self._info_tables()
        return pa.table({"Records": pa.array([records], pa.int64())})

    # -- Dremio's catalog, for INFORMATION_SCHEMA

    def _info_tables(self) -> None:
        system = [("INFORMATION_SCHEMA", t) for t in ("CATALOGS", "COLUMNS", "SCHEMATA", "TABLES", "VIEWS")]
        system += [("sys", t) for t in ("options", "jobs", "reflections")]
        tables = [("DREMIO", ".".join(p[:-1]), p[-1], "TABLE") for p in self.shown.values()]
        tables += [("DREMIO", s, t, "SYSTEM_TABLE") for s, t in system]
        # Every folder level is a schema of its own, as Dremio lists them.
        schemata = sorted({".".join(p[:k]) for p in self.shown.values() for k in range(1, len(p))}
                          | {"INFORMATION_SCHEMA", "sys"})
        self.con.execute(f'CREATE OR REPLACE TABLE "{INFO_TABLES}" (TABLE_CATALOG VARCHAR, TABLE_SCHEMA VARCHAR, '
                         f"TABLE_NAME VARCHAR, TABLE_TYPE VARCHAR)")
        self.con.executemany(f'INSERT INTO "{INFO_TABLES}" VALUES (?, ?, ?, ?)', tables)
        self.con.execute(f'CREATE OR REPLACE TABLE "{INFO_SCHEMATA}" (CATALOG_NAME VARCHAR, SCHEMA_NAME VARCHAR, '
                         f"SCHEMA_OWNER VARCHAR, TYPE VARCHAR, IS_MUTABLE VARCHAR)")
        self.con.executemany(f'INSERT INTO "{INFO_SCHEMATA}" VALUES (?, ?, ?, ?, ?)',
                             [("DREMIO", s, "<owner>", "SIMPLE", "NO") for s in schemata])
        self.paths[_key(("INFORMATION_SCHEMA", "TABLES"))] = INFO_TABLES
        self.paths[_key(("INFORMATION_SCHEMA", "SCHEMATA"))] = INFO_SCHEMATA

    # -- for assertions

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.upper() == method.upper()]


def _cookie(values: list[str], name: str) -> str | None:
    for value in values:
        for part in value.split(";"):
            key, _, v = part.strip().partition("=")
            if key == name:
                return v
    return None
