"""Who may call: users with salted scrypt hashes in a file, Basic once, then an expiring bearer.

The flow is Dremio's, so pyarrow's `authenticate_basic_token` and ADBC's username/password work:
the Handshake carries `authorization: Basic ...`, the reply header carries `authorization: Bearer
<token>`, and every later call sends that bearer. Tokens are signed (HMAC) and carry their user and
expiry, so any replica holding the same secret accepts them. Passwords and tokens are never logged.

Every call checks its bearer against the users file as it is now: a removed user or a changed
password revokes the tokens issued before, at once. Logins are throttled per user name, and the
scrypt work running at once is bounded, so guessing is slow and a flood of logins cannot starve
queries of CPU.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import pyarrow.flight as flight

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
TOKEN_SECONDS = 12 * 3600
OPEN_METHODS = {flight.FlightMethod.DO_ACTION}  # the health action stays open; the handler checks the rest
FAILURES_ALLOWED = 5  # failed logins for one user name within FAILURE_WINDOW before further tries are refused
FAILURE_WINDOW = 60.0
TRACKED_NAMES = 10_000  # user names with recent failures kept in memory at most
# scrypt takes a core for ~40 ms; leave the other cores to queries, whatever a flood of logins does.
CHECKS_AT_ONCE = max(1, (os.cpu_count() or 2) // 2)
CHECK_WAIT = 1.0  # seconds a login waits for a free check before it is refused as busy
HANDSHAKES_AT_ONCE = 64  # handshakes waiting for their client's request; past it, refused at once
HANDSHAKES_PER_USER = 4  # of a logged-in user: one user cannot hold off everyone else's logins

log = logging.getLogger("flight_lstm.server")


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    candidate = hash_password(password, base64.b64decode(salt)).split("$")[2]
    return scheme == "scrypt" and hmac.compare_digest(candidate, digest)


@functools.cache
def _dummy_hash() -> str:
    """What an unknown user's password is checked against, so that costs a known user's scrypt work
    and timing cannot tell which user names exist."""
    return hash_password(secrets.token_urlsafe(16))


class Users:
    """A JSON file {user: scrypt hash}, written atomically and readable by its owner only.

    Read on every call, so edits take effect at once; the parsed file is kept until its (inode,
    mtime, size) changes, so a read costs one stat."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._cached: tuple[tuple, Mapping[str, str]] = ((), MappingProxyType({}))

    def load(self) -> Mapping[str, str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return MappingProxyType({})
        key, users = self._cached
        if key != (st.st_ino, st.st_mtime_ns, st.st_size):
            users = MappingProxyType(json.loads(self.path.read_text()))
            self._cached = ((st.st_ino, st.st_mtime_ns, st.st_size), users)
        return users

    def add(self, user: str, password: str, replace: bool = False) -> None:
        """Add a user, or with `replace` give an existing one a new password (their tokens then fail)."""
        if not user or ":" in user:
            raise ValueError("a user name must be non-empty and hold no ':'")
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        if user in self.load() and not replace:
            raise ValueError(f"user {user!r} exists already: pass --replace to give them a new password")
        self._write({**self.load(), user: hash_password(password)})

    def remove(self, user: str) -> None:
        """Remove a user; their tokens fail from the next call on."""
        if user not in self.load():
            raise ValueError(f"no user {user!r} in {self.path.name}")
        self._write({name: stored for name, stored in self.load().items() if name != user})

    def names(self) -> list[str]:
        return sorted(self.load())

    def _write(self, users: dict[str, str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(users, indent=1))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def verify(self, user: str, password: str) -> str | None:
        """The user's stored hash (what their tokens are bound to) if the password is right, else None."""
        stored = self.load().get(user)
        return stored if check_password(password, stored or _dummy_hash()) and stored is not None else None


class Tokens:
    """`user.expiry.signature` bearer tokens; a shared secret lets replicas accept each other's.

    The signature also covers the user's stored hash (the stamp), which the token does not carry:
    a new password (new salt) or a removed user makes every earlier token fail its check."""

    def __init__(self, secret: bytes | None = None, seconds: int = TOKEN_SECONDS):
        self.secret, self.seconds = secret or secrets.token_bytes(32), seconds

    def issue(self, user: str, stamp: str) -> str:
        body = f"{base64.urlsafe_b64encode(user.encode()).decode()}.{int(time.time()) + self.seconds}"
        return f"{body}.{self._sign(body, stamp)}"

    def user_of(self, token: str, stamp_of: Callable[[str], str | None]) -> str | None:
        body, _, signature = token.rpartition(".")
        encoded, _, expiry = body.partition(".")
        try:
            user = base64.urlsafe_b64decode(encoded).decode()
        except ValueError:
            return None
        stamp = stamp_of(user)
        if stamp is None or not hmac.compare_digest(signature, self._sign(body, stamp)):
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        return user

    def _sign(self, body: str, stamp: str) -> str:
        return hmac.new(self.secret, f"{body}\n{stamp}".encode(), hashlib.sha256).hexdigest()


class LoginThrottle:
    """Failed logins per user name in a sliding window: past the allowance, tries for that name are
    refused without a password check until the window has room again. A success clears the name.

    Per name, not per address: pyarrow's middleware sees only the method and headers, not the peer,
    and behind the load balancer the peer would be the balancer anyway. Unknown names are tracked
    like known ones, so a refusal tells nothing about which names exist. Memory stays bounded: a
    name is kept as its digest (names come from clients, any length) with at most `allowed` times,
    names without failures in the window are dropped, and at most `tracked` names are kept (the
    least recently failed go first)."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window: float = FAILURE_WINDOW,
                 tracked: int = TRACKED_NAMES):
        self.allowed, self.window, self.tracked = allowed, window, tracked
        self._failures: dict[bytes, list[float]] = {}  # name digest -> recent failure times; least recent first
        self._lock = threading.Lock()

    def wait(self, user: str) -> float:
        """Seconds until `user` may try again, 0 if now."""
        now = time.monotonic()
        with self._lock:
            times = [t for t in self._failures.get(_digest(user), ()) if t > now - self.window]
        return times[0] + self.window - now if len(times) >= self.allowed else 0.0

    def failed(self, user: str) -> int:
        """Count a failure; returns the failures of `user` within the window."""
        now = time.monotonic()
        with self._lock:
            key = _digest(user)
            times = [t for t in self._failures.pop(key, ()) if t > now - self.window]
            self._failures[key] = times = [*times, now][-self.allowed:]
            while self._failures:
                oldest = next(iter(self._failures))
                if len(self._failures) <= self.tracked and self._failures[oldest][-1] > now - self.window:
                    break
                del self._failures[oldest]
            return len(times)

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(_digest(user), None)


class _Caller(flight.ServerMiddleware):
    def __init__(self, user: str | None, token: str | None = None):
        self.user, self.token = user, token

    def sending_headers(self):
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


# The bearer a Handshake's Basic login was answered with, for its handler's reply message, by OS
# thread: pyarrow starts a call's middleware on the thread that then runs its handler, and every
# Handshake sets its thread's entry first, so a handler reads its own call's token and never
# another's. (Not threading.local: each pyarrow callback may get a fresh Python thread state.)
_handshake_tokens: dict[int, str | None] = {}
_handshake_users: dict[int, str] = {}  # and, the same way, the user it logged in


class BasicBearerAuth(flight.ServerMiddlewareFactory):
    """Checks every call: Basic on the handshake (answered with a bearer), the bearer elsewhere."""

    def __init__(self, users: Users, tokens: Tokens, throttle: LoginThrottle | None = None,
                 checks_at_once: int = CHECKS_AT_ONCE, check_wait: float = CHECK_WAIT):
        self.users, self.tokens = users, tokens
        self.throttle = throttle or LoginThrottle()
        self._checks, self.check_wait = threading.BoundedSemaphore(checks_at_once), check_wait

    def start_call(self, info, headers):
        if info.method == flight.FlightMethod.HANDSHAKE:
            _handshake_tokens.pop(threading.get_ident(), None)
            _handshake_users.pop(threading.get_ident(), None)
        value = _header(headers, "authorization")
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "basic":
            user, password = _basic(credentials)
            if user is None:
                log.warning("login failed: the Basic credentials are not base64 'user:password'")
                raise flight.FlightUnauthenticatedError("invalid user name or password")
            token = self.tokens.issue(user, self._login(user, password))
            if info.method == flight.FlightMethod.HANDSHAKE:
                _handshake_tokens[threading.get_ident()] = token
                _handshake_users[threading.get_ident()] = user
            return _Caller(user, token)
        if scheme.lower() == "bearer":
            user = self.tokens.user_of(credentials.strip(), self.users.load().get)
            if user is None:
                raise flight.FlightUnauthenticatedError("the token is invalid or expired; log in again")
            if info.method == flight.FlightMethod.HANDSHAKE:
                _handshake_users[threading.get_ident()] = user
            return _Caller(user)
        if info.method in OPEN_METHODS:
            return _Caller(None)
        raise flight.FlightUnauthenticatedError("authentication required: log in with a user name and password")

    def _login(self, user: str, password: str) -> str:
        """Check a password, unless the name is throttled or too many checks already run; returns
        the user's stored hash."""
        self._refuse_if_throttled(user)
        if not self._checks.acquire(timeout=self.check_wait):
            log.warning("login for user %.80r refused: the server is busy checking other logins", user)
            raise flight.FlightUnavailableError("too many logins at once; retry in 1 s")
        try:
            self._refuse_if_throttled(user)  # again: failures may have come in while this login waited
            stored = self.users.verify(user, password)
        finally:
            self._checks.release()
        if stored is not None:
            self.throttle.succeeded(user)
            return stored
        failures = self.throttle.failed(user)
        log.warning("login for user %.80r failed: wrong user name or password (%d in the last %d s, %d allowed)",
                    user, failures, self.throttle.window, self.throttle.allowed)
        raise flight.FlightUnauthenticatedError("invalid user name or password")

    def _refuse_if_throttled(self, user: str) -> None:
        wait = math.ceil(self.throttle.wait(user))
        if wait:
            log.warning("login for user %.80r refused: too many failed logins; retry in %d s", user, wait)
            raise flight.FlightUnavailableError(f"too many failed logins for this user; retry in {wait} s")


class HandshakeAnswer(flight.ServerAuthHandler):
    """Answers every Handshake with one message, with auth or without: clients that always
    handshake, and clients that wait for its reply, connect. With auth the middleware checked the
    Basic login, and the reply carries the bearer token (as the reply header does); without, it
    is empty. The request's payload holds no credentials here, but it is waited for (or the
    client's end of writing): a call answered and ended first leaves a client whose write then
    fails waiting forever for its unread reply (pyarrow's does). A client that never sends holds
    its wait until it goes, so at most `per_user` of a logged-in user's wait, and at most
    `at_once` of anonymous ones (auth off; with auth on, an anonymous Handshake is refused before
    it waits); the next are refused."""

    def __init__(self, at_once: int = HANDSHAKES_AT_ONCE, per_user: int = HANDSHAKES_PER_USER):
        super().__init__()
        self.at_once, self.per_user, self._anonymous = at_once, per_user, 0
        self._waiting: dict[str, int] = {}
        self._lock = threading.Lock()

    def authenticate(self, outgoing, incoming):
        user = _handshake_users.pop(threading.get_ident(), None)
        self._enter(user)
        try:
            incoming.read()
        except OSError:  # the client closed its side without a request: the Basic header was it
            pass
        finally:
            self._leave(user)
        outgoing.write((_handshake_tokens.pop(threading.get_ident(), None) or "").encode())

    def _enter(self, user: str | None) -> None:
        with self._lock:
            held = self._anonymous if user is None else self._waiting.get(user, 0)
            if held >= (self.at_once if user is None else self.per_user):
                log.warning("handshake refused: %d of %s wait for their clients' requests", held,
                            "anonymous ones" if user is None else f"user {user[:80]!r}'s")
                raise flight.FlightUnavailableError("too many handshakes at once; retry in 1 s")
            if user is None:
                self._anonymous += 1
            else:
                self._waiting[user] = held + 1

    def _leave(self, user: str | None) -> None:
        with self._lock:
            if user is None:
                self._anonymous -= 1
            elif self._waiting[user] == 1:
                del self._waiting[user]
            else:
                self._waiting[user] -= 1

    def is_valid(self, token):
        return ""


# The middleware every call passes (server/calls.py): it runs the login check above inside its
# own count of calls in flight, so a refused call is never left counted, and carries the user.
CALLS_KEY = "calls"


def caller(context) -> str | None:
    """The authenticated user of a call, or None (auth off, or an open call without credentials)."""
    middleware = context.get_middleware(CALLS_KEY)
    return middleware.user if middleware is not None else None


def forget_handshake() -> None:
    """A Handshake refused after its login was checked: its thread's bearer and user go, as its
    answer would have taken them."""
    _handshake_tokens.pop(threading.get_ident(), None)
    _handshake_users.pop(threading.get_ident(), None)


def _digest(user: str) -> bytes:
    return hashlib.sha256(user.encode()).digest()


def _header(headers: dict, name: str) -> str:
    values = headers.get(name) or headers.get(name.title()) or []
    return values[0] if values else ""


def _basic(credentials: str) -> tuple[str | None, str]:
    """Decode Basic credentials; the Go client sends unpadded base64."""
    try:
        text = base64.b64decode(credentials.strip() + "=" * (-len(credentials.strip()) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None, ""
    user, sep, password = text.partition(":")
    return (user, password) if sep else (None, "")
