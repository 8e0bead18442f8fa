"""Who may call: users with salted scrypt hashes in a file, Basic once, then an expiring bearer.

The flow is Dremio's, so pyarrow's `authenticate_basic_token` and ADBC's username/password work:
the Handshake carries `authorization: Basic ...`, the reply header carries `authorization: Bearer
<token>`, and every later call sends that bearer. Tokens are signed (HMAC) and carry their user and
expiry, so any replica holding the same secret accepts them. Passwords and tokens are never logged.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

import pyarrow.flight as flight

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
TOKEN_SECONDS = 12 * 3600
OPEN_METHODS = {flight.FlightMethod.DO_ACTION}  # the health action stays open; the handler checks the rest


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


class Users:
    """A JSON file {user: scrypt hash}, written atomically and readable by its owner only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict[str, str]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def add(self, user: str, password: str) -> None:
        if not user or ":" in user:
            raise ValueError("a user name must be non-empty and hold no ':'")
        if len(password) < 8:
            raise ValueError("a password needs at least 8 characters")
        users = {**self.load(), user: hash_password(password)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(users, indent=1))
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)

    def verify(self, user: str, password: str) -> bool:
        stored = self.load().get(user)
        return stored is not None and check_password(password, stored)


class Tokens:
    """`user.expiry.signature` bearer tokens; a shared secret lets replicas accept each other's."""

    def __init__(self, secret: bytes | None = None, seconds: int = TOKEN_SECONDS):
        self.secret, self.seconds = secret or secrets.token_bytes(32), seconds

    def issue(self, user: str) -> str:
        body = f"{base64.urlsafe_b64encode(user.encode()).decode()}.{int(time.time()) + self.seconds}"
        return f"{body}.{self._sign(body)}"

    def user_of(self, token: str) -> str | None:
        body, _, signature = token.rpartition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            return None
        user, _, expiry = body.partition(".")
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        return base64.urlsafe_b64decode(user).decode()

    def _sign(self, body: str) -> str:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()


class _Caller(flight.ServerMiddleware):
    def __init__(self, user: str | None, token: str | None = None):
        self.user, self.token = user, token

    def sending_headers(self):
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


class BasicBearerAuth(flight.ServerMiddlewareFactory):
    """Checks every call: Basic on the handshake (answered with a bearer), the bearer elsewhere."""

    def __init__(self, users: Users, tokens: Tokens):
        self.users, self.tokens = users, tokens

    def start_call(self, info, headers):
        value = _header(headers, "authorization")
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "basic":
            user, password = _basic(credentials)
            if user is None or not self.users.verify(user, password):
                raise flight.FlightUnauthenticatedError("invalid user name or password")
            return _Caller(user, self.tokens.issue(user))
        if scheme.lower() == "bearer":
            user = self.tokens.user_of(credentials.strip())
            if user is None:
                raise flight.FlightUnauthenticatedError("the token is invalid or expired; log in again")
            return _Caller(user)
        if info.method in OPEN_METHODS:
            return _Caller(None)
        raise flight.FlightUnauthenticatedError("authentication required: log in with a user name and password")


class NoOpAuthHandler(flight.ServerAuthHandler):
    """The middleware does the work; Handshake must still be answered, or clients fail to connect."""

    def authenticate(self, outgoing, incoming):
        pass

    def is_valid(self, token):
        return ""


def caller(context) -> str | None:
    """The authenticated user of a call, or None (auth off, or an open call without credentials)."""
    middleware = context.get_middleware("auth")
    return middleware.user if middleware is not None else None


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
