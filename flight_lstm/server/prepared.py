"""Open Flight SQL prepared statements, with a time to live, since clients close them lazily and a
crashed client never does.

A handle carries its SQL for the client's sake; the store keeps what decides: that it is still
open, who opened it, its SQL (a handle whose SQL was edited is unknown) and its bound parameters. Each use renews the lease; an expired, closed or foreign handle
is an error. A statement belongs to the user who prepared it (None with auth off): to anyone else
its handle is unknown, so another user can neither run it, see or change its parameters, nor close
it, nor tell it from a handle that never existed. Closing an unknown handle does nothing, as ADBC's
driver fails on an error there (it closes expired handles too).
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass

from flight_lstm.errors import InvalidQuery, ResourceExhausted

STATEMENT_TTL = 600.0  # seconds a prepared statement lives unused
STATEMENTS_PER_USER = 256  # open at once; a client that never closes cannot fill the server
PARAMETER_BYTES = 2 << 20  # the bound values of one statement, counted as `parameter_bytes` does
# What a bound value costs beyond its Arrow bytes, as a Python object in a list (a Decimal is 104
# bytes and its slot 8; counted at 16, 256 statements of decimals held 1.1 GB), and each row's list.
CELL_BYTES, ROW_BYTES = 112, 64
PARAMETER_ROWS = 10_000  # rows of values bound at once: each row runs the query once
# All open statements' texts and bound values together, per user and in all: each statement's own
# bound does not bound a user's 256 of them, nor all users'.
USER_BYTES, TOTAL_BYTES = 32 << 20, 256 << 20


@dataclass
class _Open:
    user: str | None
    params: list[list] | None  # rows of bound values
    used: float
    sql: str
    sql_bytes: int
    params_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.sql_bytes + self.params_bytes


def parameter_bytes(rows: int, columns: int, arrow_bytes: int) -> int:
    """What rows of bound values hold once they are Python lists (CELL_BYTES, ROW_BYTES)."""
    return arrow_bytes + CELL_BYTES * rows * columns + ROW_BYTES * rows


class PreparedStatements:
    def __init__(self, ttl: float = STATEMENT_TTL):
        self.ttl = ttl
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    def open(self, sql: str, user: str | None) -> bytes:
        key = secrets.token_hex(16)
        with self._lock:
            self._sweep()
            if sum(entry.user == user for entry in self._open.values()) >= STATEMENTS_PER_USER:
                raise ResourceExhausted(f"resource exhausted: {STATEMENTS_PER_USER} prepared statements are open "
                                        "for this user; close some first")
            entry = _Open(user, None, time.monotonic(), sql, len(sql.encode("utf-8", "surrogatepass")))
            self._check_room(user, entry.bytes)
            self._open[key] = entry
        return json.dumps({"id": key, "sql": sql}).encode()

    def get(self, handle: bytes, user: str | None) -> tuple[str, list[list] | None]:
        """(SQL, the rows of bound parameters) of an open statement of `user`; renews its lease."""
        key, sql = _parse(handle)
        with self._lock:
            entry = self._entry(key, user)
            if entry.sql != sql:  # a handle edited by its client names another statement
                raise InvalidQuery("unknown or expired prepared statement: prepare the query again")
            return sql, entry.params

    def bind(self, handle: bytes, params: list[list], size: int, user: str | None) -> None:
        """Bind rows of values that hold `size` bytes (`parameter_bytes`) in place of the last ones."""
        key, _ = _parse(handle)
        with self._lock:
            entry = self._entry(key, user)
            self._check_room(user, size - entry.params_bytes)
            entry.params, entry.params_bytes = params, size

    def close(self, handle: bytes, user: str | None) -> None:
        """Closing twice, or after expiry, is fine: clients close lazily. Another's handle stays open."""
        key, _ = _parse(handle)
        with self._lock:
            if key in self._open and self._open[key].user == user:
                del self._open[key]

    def __len__(self) -> int:
        with self._lock:
            self._sweep()
            return len(self._open)

    def _entry(self, key: str, user: str | None) -> _Open:
        self._sweep()
        entry = self._open.get(key)
        if entry is None or entry.user != user:
            raise InvalidQuery("unknown or expired prepared statement: prepare the query again")
        entry.used = time.monotonic()
        return entry

    def _check_room(self, user: str | None, more: int) -> None:
        held = sum(entry.bytes for entry in self._open.values() if entry.user == user)
        if held + more > USER_BYTES:
            raise ResourceExhausted(f"resource exhausted: this user's prepared statements hold {held:,} bytes of "
                                    f"at most {USER_BYTES:,}; close some first")
        if sum(entry.bytes for entry in self._open.values()) + more > TOTAL_BYTES:
            raise ResourceExhausted("resource exhausted: prepared statements hold all the memory the server keeps "
                                    "for them; try again later")

    def _sweep(self) -> None:
        deadline = time.monotonic() - self.ttl
        for key in [k for k, v in self._open.items() if v.used < deadline]:
            del self._open[key]


def _parse(handle: bytes) -> tuple[str, str]:
    try:
        fields = json.loads(handle)
        return str(fields["id"]), str(fields["sql"])
    except (ValueError, TypeError, KeyError, RecursionError):  # RecursionError: JSON nested 100,000 deep
        raise InvalidQuery("not a prepared statement handle of this server") from None
