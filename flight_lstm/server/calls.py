"""Calls in flight: how many the server holds at once, in all and per caller, and how long a call
may wait on a silent client.

pyarrow's server is gRPC's synchronous one: every call holds a thread from its start to its end,
waiting included, and a thread reserves its whole stack (8 MiB by default) in the data segment
that `--max-memory` caps. Clients that open streams and then neither send nor read (DoExchange,
DoPut, DoGet, Handshake) held a thread each for as long as they liked: 300 of them from one
connection took every thread a 1 GB server could start, and every other call, health included,
was refused until they left. So:

* Every call is counted from its start (`InFlight.start_call`, before a handler thread runs or
  blocks) to its end (`call_completed`, which pyarrow reaches however a call ends; a call dropped
  without it is released when its middleware object goes). Past `max_calls` in all, or
  `per_user` of one logged-in user, a call is refused at once with UNAVAILABLE. Streams may take
  all but a reserve of the total, kept for calls that answer at once (the health action,
  GetFlightInfo, listings).
* pyarrow tells a middleware neither the peer nor the connection, only the method and headers
  (which the client writes). With auth off a call's caller is its address, as the handler's
  context gives it (`enter`): IPv4, or an IPv6 address's /64, since one host holds a whole /64.
  A stream whose first message never comes (pyarrow's clients always send one; a hand-made
  HTTP/2 client need not) is held before any handler runs, so no address is known for it: it
  counts in the total and its streams' share, and once one has waited past the silent-client
  deadline below, every connection on which no call's handler runs is shut down (`Waits`). A
  connection that also keeps one live call going is spared: auth, or a proxy bounding streams per
  client, closes that gap.
* A stream whose client neither sends nor reads for `silent_seconds` loses its connection
  (`Waits`): --idle-seconds end its query and free its slot, as before, and a client back within
  a grace after that (as long again, at least GRACE_SECONDS) reads why; past the grace the
  connection is shut down. pyarrow offers no way to end one call from the server: a blocked read
  (`read_chunk`, `schema`) or write returns only when the client sends, reads, or its call ends,
  and `ServerCallContext` has no cancel. Shutting the connection's socket down is what a network
  failure does: every call on that connection ends, the blocked thread returns, and the client's
  channel reconnects for its next call. Linux only (it finds the socket through /proc);
  elsewhere, and for a Handshake (whose handler is given no context), the caps alone hold.
* A query that meets an internal error of DuckDB's (a bug of DuckDB's a crafted query can reach)
  may leave the database invalidated: the engine replaces it, and every client's running queries
  end ("run it again"). One client sending such a query every 0.2 s ended 41 of 75 other clients'
  streams and all their exchanges. A caller whose queries met BREAKS_ALLOWED of them within
  BREAK_WINDOW seconds is refused at once until the window has room (`failed`, `enter`), and its
  calls already in flight stop (`refused`: a burst sent together had all passed `enter`).

Left as they are: gRPC gives a call its thread before any of this runs, so a burst of thousands
of calls opened at once still reserves a stack each until they are refused, a moment later; and
thread stacks keep their size, since the planner's and DuckDB's depth limits are counts that
assume it (a smaller stack would turn a deep query they refuse into a crash of the process).
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import math
import os
import resource
import socket
import threading
import time
import weakref
from typing import Callable, Iterator
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.flight as flight
from prometheus_client import Counter, Gauge

from flight_lstm.engine.limits import data_segment, usable_memory
from flight_lstm.errors import DuckDBFailed, QueryCancelled, QueryTimedOut
from flight_lstm.server.auth import CALLS_KEY as KEY
from flight_lstm.server.auth import LoginThrottle, forget_handshake
from flight_lstm.server.errors import to_flight_error
from flight_lstm.ticker import Ticker

log = logging.getLogger("flight_lstm.server")

STREAMS = frozenset({flight.FlightMethod.HANDSHAKE, flight.FlightMethod.DO_GET, flight.FlightMethod.DO_PUT,
                     flight.FlightMethod.DO_EXCHANGE})  # the calls that may wait on their client
MEMORY_SHARE = 4  # the calls' threads may reserve at most a quarter of the memory room left under the cap
MIN_CALLS, MAX_CALLS = 16, 256  # the default's bounds; gRPC itself sets none
PER_USER_SHARE = 4  # one caller may hold a quarter of the total by default
CALL_BYTES = 1 << 20  # per call beyond its thread's stack: gRPC's buffers, Python's thread state, an arena's start
DEFAULT_STACK = 8 << 20  # glibc's default thread stack where it cannot be asked
GRACE_SECONDS = 10.0  # at least this long for a client whose stream ended for silence to come back and read why
BREAKS_ALLOWED, BREAK_WINDOW = 3, 60.0  # a caller's queries meeting DuckDB's internal errors, and in how long

CALLS = Gauge("flight_lstm_calls_in_flight", "Flight calls started and not yet ended")
REFUSED = Counter("flight_lstm_calls_refused", "Flight calls refused at their start, by the limit reached", ["limit"])


def thread_stack_bytes() -> int:
    """The stack a new thread reserves unless its creator says otherwise (gRPC's threads do not):
    glibc's default, taken from RLIMIT_STACK when the process started."""
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them
        attr, size = ctypes.create_string_buffer(256), ctypes.c_size_t()  # pthread_attr_t is 56 bytes on x86-64
        if libc.pthread_getattr_default_np(attr) != 0:
            return DEFAULT_STACK
        try:
            if libc.pthread_attr_getstacksize(attr, ctypes.byref(size)) != 0:
                return DEFAULT_STACK
        finally:
            libc.pthread_attr_destroy(attr)
        return size.value or DEFAULT_STACK
    except (OSError, AttributeError):  # no glibc
        soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
        return soft if 0 < soft < (1 << 30) else DEFAULT_STACK


def afforded_calls() -> int:
    """The default of --max-calls: as many calls as a quarter of the memory room under the
    process's cap (RLIMIT_DATA, set by --max-memory; without one, the usable memory) pays for,
    at a thread stack plus CALL_BYTES each, and half the threads a cgroup's pids.max leaves;
    within MIN_CALLS and MAX_CALLS."""
    now = data_segment() or 0
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    room = (soft - now) if soft != resource.RLIM_INFINITY else usable_memory()
    calls = max(room, 0) // MEMORY_SHARE // (thread_stack_bytes() + CALL_BYTES)
    threads = _threads_left()
    if threads is not None:
        calls = min(calls, threads // 2)
    return int(max(MIN_CALLS, min(MAX_CALLS, calls)))


def _threads_left() -> int | None:
    try:
        with open("/sys/fs/cgroup/pids.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/pids.current") as f:
            current = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return max(int(limit) - current, 0) if limit.isdigit() else None


def silent_seconds(idle_seconds: float) -> float:
    """How long a stream may wait on its client before its connection is closed: --idle-seconds,
    then a grace of as long again (at least GRACE_SECONDS)."""
    return idle_seconds + max(idle_seconds, GRACE_SECONDS)


def reserve_of(max_calls: int) -> int:
    """Calls kept for those that answer at once: streams may take the rest."""
    return max(1, max_calls // 8) if max_calls > 1 else 0


_BUSY = flight.FlightUnavailableError("the server is out of resources for this call; retry shortly")


def clean(error: BaseException) -> BaseException:
    """Any exception as a Flight error pyarrow sends without a traceback, even when building
    that error fails too (out of memory): a shared, prepared one then."""
    try:
        return to_flight_error(error)
    except BaseException:  # noqa: BLE001 - whatever it is, the client gets a clean status
        return _BUSY.with_traceback(None)


class Guarded(flight.ServerMiddlewareFactory):
    """Another factory whose failures leave as clean Flight errors: pyarrow sends any other
    exception from `start_call` with its Python traceback."""

    def __init__(self, factory: flight.ServerMiddlewareFactory):
        self.factory = factory

    def start_call(self, info, headers):
        try:
            return self.factory.start_call(info, headers)
        except BaseException as e:  # noqa: BLE001
            raise clean(e) from None


class InFlight(flight.ServerMiddlewareFactory):
    """Counts calls from their start to their end, in all and per caller, and refuses a call past
    a limit before its handler runs. With `auth`, that factory's check runs inside this one (so
    a refusal never leaves a counted call behind) and the caller is its user."""

    def __init__(self, auth: flight.ServerMiddlewareFactory | None = None, max_calls: int | None = None,
                 per_user: int | None = None, waits: Waits | None = None):
        self.auth, self.waits = auth, waits
        self.max_calls = afforded_calls() if max_calls is None else max_calls
        self.per_user = max(1, self.max_calls // PER_USER_SHARE) if per_user is None else per_user
        if self.max_calls < 1 or self.per_user < 1:
            raise ValueError("the calls in flight allowed, in all and per user, must be at least 1")
        self.reserve = reserve_of(self.max_calls)
        self._lock = threading.Lock()
        self._all = self._streams = 0
        self._callers: dict[tuple[str, str], int] = {}  # ("user", name) or ("address", key) -> calls
        self._logged: dict[str, float] = {}
        self.breaks = LoginThrottle(BREAKS_ALLOWED, BREAK_WINDOW)  # per caller: queries that met DuckDB's internal errors

    def counts(self) -> dict:
        """What is held now: calls in all, streams, and per caller."""
        with self._lock:
            return {"calls": self._all, "streams": self._streams, "callers": dict(self._callers)}

    def start_call(self, info, headers):
        try:
            stream = info.method in STREAMS
            self._take(stream)
            try:
                identity = self.auth.start_call(info, headers) if self.auth is not None else None
                user = getattr(identity, "user", None)
                if user is not None:
                    self._take_caller(("user", user), f"user {user[:80]!r}")
                try:
                    # A stream of no user has no address until its handler runs (`enter`), after its first message.
                    unread = stream and user is None and info.method != flight.FlightMethod.HANDSHAKE
                    return _Call(self, stream, identity, user, unread)
                except BaseException:
                    if user is not None:
                        self._leave_caller(("user", user))
                    raise
            except BaseException:
                self._leave(stream)
                if info.method == flight.FlightMethod.HANDSHAKE:
                    forget_handshake()
                raise
        except BaseException as e:  # noqa: BLE001 - pyarrow sends anything but a FlightError with its traceback
            raise clean(e) from None

    def _take(self, stream: bool) -> None:
        with self._lock:
            if self._all >= self.max_calls:
                full, held = "all", self._all
            elif stream and self._streams >= self.max_calls - self.reserve:
                full, held = "streams", self._streams
            else:
                self._all += 1
                self._streams += stream
                CALLS.inc()
                return
        self._refused(full, "the server holds %d calls (--max-calls %d)", held, self.max_calls)
        if full == "all":
            raise flight.FlightUnavailableError(
                f"the server is busy: {held} calls are in flight, its limit (--max-calls); retry shortly")
        raise flight.FlightUnavailableError(
            f"the server is busy: {held} streams are in flight, all that --max-calls {self.max_calls} leaves "
            f"them ({self.reserve} are kept for quick calls); retry shortly")

    def _leave(self, stream: bool) -> None:
        with self._lock:
            self._all -= 1
            self._streams -= stream
        CALLS.dec()

    def _take_caller(self, key: tuple[str, str], who: str) -> None:
        with self._lock:
            held = self._callers.get(key, 0)
            if held < self.per_user:
                self._callers[key] = held + 1
                return
        self._refused(key[0], "%s holds %d calls (--max-calls-per-user)", who, held)
        raise flight.FlightUnavailableError(
            f"too many calls in flight for {'this user' if key[0] == 'user' else 'your address'}: {held}, "
            "the server's limit (--max-calls-per-user); let some end, then retry")

    def _leave_caller(self, key: tuple[str, str]) -> None:
        with self._lock:
            held = self._callers.get(key, 0)
            if held <= 1:
                self._callers.pop(key, None)
            else:
                self._callers[key] = held - 1

    def _refused(self, limit: str, message: str, *args) -> None:
        REFUSED.labels(limit).inc()
        now = time.monotonic()
        with self._lock:  # a flood of refusals is one line per limit every 10 s
            if now - self._logged.get(limit, -10.0) < 10.0:
                return
            self._logged[limit] = now
        log.warning("call refused: " + message, *args)


class _Call(flight.ServerMiddleware):
    """One call's counts, given back once: at `call_completed`, or when pyarrow drops the call's
    middleware without it (a start that failed after this one's)."""

    def __init__(self, calls: InFlight, stream: bool, identity, user: str | None, unread: bool = False):
        self.user, self._identity, self._calls = user, identity, calls
        self.caller: str | None = None  # "user <name>" or "address <address>", once the handler entered
        self._address: weakref.finalize | None = None
        self._running: weakref.finalize | None = None
        self._done = weakref.finalize(self, _release, calls, stream, user)
        self._done.atexit = False  # a process that exits has nothing to give back
        self._unread = calls.waits.unread(self) if unread and calls.waits is not None else None

    def enter(self, context: flight.ServerCallContext) -> None:
        """Refuse a caller whose queries met too many of DuckDB's internal errors lately; with no user
        (auth off, or the open health action), count the call under its client's address, or refuse
        it past the per-caller limit. The handler calls this first."""
        if self._unread is not None:
            self._unread()  # its first message came
        peer = context.peer()
        self.caller = f"user {self.user}" if self.user is not None else f"address {address_of(peer)}"
        wait = self._calls.breaks.wait(self.caller)
        if wait > 0:
            self._calls._refused("breaks", "%s met %d internal errors of DuckDB's in %g s", self.caller[:100],
                                 BREAKS_ALLOWED, BREAK_WINDOW)
            raise flight.FlightUnavailableError(
                f"your queries met {BREAKS_ALLOWED} internal errors of DuckDB's within {BREAK_WINDOW:g} s, "
                f"each of which may end every client's running queries; retry in {math.ceil(wait)} s")
        if self.user is not None or self._address is not None:
            return
        key = ("address", address_of(peer))
        self._calls._take_caller(key, "address " + key[1])
        try:
            self._address = weakref.finalize(self, self._calls._leave_caller, key)
            self._address.atexit = False
        except BaseException:
            self._calls._leave_caller(key)
            raise
        if self._calls.waits is not None:
            self._running = self._calls.waits.running(self, peer)

    # Both must not fail, and must not allocate when they do (out of memory is when they would):
    # a count not given back here is given back when pyarrow lets go of this object.
    def sending_headers(self):
        try:
            return self._identity.sending_headers() if self._identity is not None else None
        except BaseException:  # noqa: BLE001
            return None

    def call_completed(self, exception):
        for done in (self._done, self._address, self._unread, self._running):
            try:
                if done is not None:
                    done()
            except BaseException:  # noqa: BLE001
                pass
        try:
            if self._identity is not None:
                self._identity.call_completed(exception)
        except BaseException:  # noqa: BLE001
            pass


def _release(calls: InFlight, stream: bool, user: str | None) -> None:
    calls._leave(stream)
    if user is not None:
        calls._leave_caller(("user", user))


def enter(context: flight.ServerCallContext) -> None:
    """A handler's first step: count an anonymous call under its address (`_Call.enter`)."""
    call = context.get_middleware(KEY)
    if call is not None:
        call.enter(context)


def failed(context: flight.ServerCallContext) -> Callable[[BaseException], None]:
    """What a query of this call tells of the error it ended with: one of DuckDB's internal errors
    counts against its caller (the module docstring)."""
    call = context.get_middleware(KEY)

    def count(error: BaseException) -> None:
        if isinstance(error, DuckDBFailed) and call is not None and call.caller is not None:
            call._calls.breaks.failed(call.caller)

    return count


def refused(context: flight.ServerCallContext) -> Callable[[], str]:
    """A check for this call's queries, safe from any thread: why they should stop ("" while they
    need not), once their caller is refused for DuckDB's internal errors (`enter`). A burst of
    breaking queries sent together all passed `enter` before the first was counted, and each that
    started after a renewal broke the new database (6 renewals in one burst); now those not yet
    running never start, and the running are stopped."""
    call = context.get_middleware(KEY)
    if call is None or call.caller is None:
        return lambda: ""
    breaks, caller = call._calls.breaks, call.caller

    def check() -> str:
        if breaks.wait(caller) <= 0:
            return ""
        return f"stopped: your queries met {BREAKS_ALLOWED} internal errors of DuckDB's within {BREAK_WINDOW:g} s"

    return check


def address_of(peer: str) -> str:
    """The caller a peer stands for: its IPv4 address, or its IPv6 address's /64 (one host
    commonly holds a whole /64); any other transport is one caller."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return kind or "unknown"
    host = unquote(rest).rpartition(":")[0].strip("[]").partition("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Waits:
    """Streams waiting on their client (a read it has not sent, a write it does not read). One
    thread looks every tick while something waits (flight_lstm/ticker.py); a wait past `seconds`
    has its connection shut down, which ends the wait."""

    def __init__(self, seconds: float, port: Callable[[], int]):
        self.seconds, self._port = seconds, port
        self._waiting: dict[int, _Wait] = {}
        self._unread: dict[int, float] = {}  # streams whose first message has not come: id -> since
        self._peers: dict[str, int] = {}  # the peers of calls whose handler runs, with how many
        self._ticker = Ticker("flight-lstm-waits", min(1.0, max(0.05, seconds / 10)), self._due, self._cut)

    def unread(self, call: object) -> weakref.finalize:
        """A stream waiting for its first message, from now until the returned call (or `call`
        is dropped)."""
        with self._ticker.lock:
            self._unread[id(call)] = time.monotonic()
            self._start()
        done = weakref.finalize(call, self._read, id(call))
        done.atexit = False
        return done

    def running(self, call: object, peer: str) -> weakref.finalize:
        """A call's handler runs for `peer` until the returned call (or `call` is dropped)."""
        with self._ticker.lock:
            self._peers[peer] = self._peers.get(peer, 0) + 1
        done = weakref.finalize(call, self._ended, peer)
        done.atexit = False
        return done

    def _read(self, key: int) -> None:
        with self._ticker.lock:
            self._unread.pop(key, None)

    def _ended(self, peer: str) -> None:
        with self._ticker.lock:
            left = self._peers.get(peer, 0) - 1
            if left > 0:
                self._peers[peer] = left
            else:
                self._peers.pop(peer, None)

    def _start(self) -> None:
        """Under the lock: the deadline's thread, unless it runs."""
        try:
            self._ticker.start()
        except BaseException:  # noqa: BLE001 - no thread left: this wait goes without its deadline, the caps hold
            log.warning("no thread for the silent-client deadline; the call limits alone hold")

    def of(self, context: flight.ServerCallContext) -> "_Wait":
        return _Wait(self, context)

    def waiting(self) -> int:
        with self._ticker.lock:
            return len(self._waiting)

    def _begin(self, wait: "_Wait") -> None:
        with self._ticker.lock:
            self._waiting[id(wait)] = wait
            self._start()

    def _end(self, wait: "_Wait") -> None:
        with self._ticker.lock:
            self._waiting.pop(id(wait), None)

    def _due(self) -> list[str | frozenset] | None:
        """The peers of the waits past the deadline (every wait on such a connection ends with
        it); and, when a stream has waited that long for its first message, the peers of the
        calls whose handler runs, as a set: every other connection is shut down. The unread
        streams' clocks then start again, so the sweep repeats only as often as the deadline."""
        if not self._waiting and not self._unread:
            return None
        now = time.monotonic()
        peers = {w.peer for w in self._waiting.values() if not w.cut and now - w.since > self.seconds}
        for w in self._waiting.values():
            if w.peer in peers:
                w.cut = True
        orders: list[str | frozenset] = sorted(peers)
        if any(now - since > self.seconds for since in self._unread.values()):
            orders.append(frozenset(self._peers))
            for key in self._unread:
                self._unread[key] = now
        return orders

    def _cut(self, orders: list[str | frozenset]) -> None:
        for order in orders:
            if isinstance(order, frozenset):
                shut = cut_all_but(order, self._port())
                log.warning("a stream waited %g s for its first message; %d connections on which no call "
                            "runs were closed", self.seconds, shut)
                continue
            shut = cut(order, self._port())
            log.warning("a client at %s sent and read nothing for %g s; %s", address_of(order), self.seconds,
                        "its connection was closed" if shut else "its connection could not be found to close")


class _Wait:
    """One stream's waits on its client, each `with wait:` around a read or write that blocks."""

    def __init__(self, waits: Waits, context: flight.ServerCallContext):
        self._waits, self._context = waits, context
        self.peer = context.peer()
        self.since = 0.0
        self.cut = False

    def __enter__(self):
        self.since = time.monotonic()
        self._waits._begin(self)
        return self

    def __exit__(self, *exc):
        self._waits._end(self)
        return False

    def ended(self) -> Exception | None:
        """Why the stream ended short, if it did: its connection was cut, or its client cancelled."""
        if self.cut:
            return QueryTimedOut(f"the client sent and read nothing for {self._waits.seconds:g} s (the server's "
                                 "--idle-seconds and a grace); its connection was closed")
        if self._context.is_cancelled():
            return QueryCancelled("the client went away before it finished sending")
        return None

    def reader(self, reader: flight.MetadataRecordBatchReader) -> "WatchedReader":
        return WatchedReader(reader, self)

    def write(self, write: Callable, *args) -> None:
        """A write to the client, under the deadline; one that fails because the stream was cut
        short says why."""
        try:
            with self:
                write(*args)
        except (OSError, pa.ArrowException):
            ended = self.ended()
            if ended is not None:
                raise ended from None
            raise

    def batches(self, batches: Iterator) -> Iterator:
        """A result's batches, each one waited for by the client while pyarrow writes it."""
        try:
            for batch in batches:
                with self:
                    yield batch
        finally:
            self._waits._end(self)


class WatchedReader:
    """A stream's reader whose reads wait under the deadline; a stream cut short (the deadline, or
    the client gone) is an error, not an end of input: pyarrow reads both as the end."""

    def __init__(self, reader: flight.MetadataRecordBatchReader, wait: _Wait):
        self._reader, self._wait = reader, wait

    @property
    def schema(self):
        try:
            with self._wait:
                return self._reader.schema
        except (OSError, pa.ArrowException):  # pyarrow's "Client never sent a data message"
            ended = self._wait.ended()
            if ended is not None:
                raise ended from None
            raise

    def read_chunk(self):
        try:
            with self._wait:
                return self._reader.read_chunk()
        except (StopIteration, OSError, pa.ArrowException):
            ended = self._wait.ended()
            if ended is not None:
                raise ended from None
            raise

    def __iter__(self):
        while True:
            try:
                yield self.read_chunk()
            except StopIteration:
                return

    def __getattr__(self, name: str):  # anything else the reader offers, unwatched
        return getattr(self._reader, name)


def cut(peer: str, port: int) -> bool:
    """Shut down the server's TCP connection to `peer` (gRPC's "ipv4:1.2.3.4:5678"), as a network
    failure would: gRPC then ends every call on it."""
    want = _endpoint(peer)
    return want is not None and _shut(port, lambda theirs: theirs == want, first=True) == 1


def cut_all_but(peers: frozenset, port: int) -> int:
    """Shut down every connection to the server's `port` but those to `peers`; how many."""
    spared = {_endpoint(p) for p in peers}
    return _shut(port, lambda theirs: theirs not in spared)


def _endpoint(peer: str) -> tuple | None:
    """gRPC's "ipv4:1.2.3.4:5678" as (address, port); None for another transport."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, peer_port = unquote(rest).rpartition(":")
    try:
        return _plain(host.strip("[]")), int(peer_port)  # as a socket's peer is read (`_shut`)
    except ValueError:
        return None


def _shut(port: int, chosen: Callable[[tuple], bool], first: bool = False) -> int:
    """Shut down the connections to `port` whose peer is `chosen`. Each socket is found through
    /proc/self/fd and checked by its own two addresses after it is duplicated, so a descriptor
    reused meanwhile is never touched; gRPC keeps and later closes its own descriptor."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    shut = 0
    for name in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            duplicate = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            sock = socket.socket(fileno=duplicate)
        except OSError:
            os.close(duplicate)
            continue
        try:
            with sock:
                if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                mine, theirs = sock.getsockname(), sock.getpeername()
                if mine[1] == port and chosen((_plain(theirs[0]), theirs[1])):
                    sock.shutdown(socket.SHUT_RDWR)
                    shut += 1
                    if first:
                        return shut
        except OSError:  # not connected (a listening socket), or gone meanwhile
            continue
    return shut


def _plain(host: str):
    ip = ipaddress.ip_address(host.partition("%")[0])
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
