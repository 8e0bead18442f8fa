"""Open Flight SQL prepared statements, with a time to live, since clients close them lazily and a
crashed client never does.

A handle carries its SQL, so the store keeps only what a handle cannot: that it is still open, and
its bound parameters. Each use renews the lease; an expired, closed or foreign handle is an error.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass

from flight_lstm.errors import InvalidQuery

STATEMENT_TTL = 600.0  # seconds a prepared statement lives unused


@dataclass
class _Open:
    params: list | None
    used: float


class PreparedStatements:
    def __init__(self, ttl: float = STATEMENT_TTL):
        self.ttl = ttl
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()

    def open(self, sql: str) -> bytes:
        key = secrets.token_hex(16)
        with self._lock:
            self._sweep()
            self._open[key] = _Open(None, time.monotonic())
        return json.dumps({"id": key, "sql": sql}).encode()

    def get(self, handle: bytes) -> tuple[str, list | None]:
        """(SQL, bound parameters) of an open statement; renews its lease."""
        key, sql = _parse(handle)
        with self._lock:
            self._sweep()
            entry = self._open.get(key)
            if entry is None:
                raise InvalidQuery("unknown or expired prepared statement: prepare the query again")
            entry.used = time.monotonic()
            return sql, entry.params

    def bind(self, handle: bytes, params: list) -> None:
        key, _ = _parse(handle)
        self.get(handle)
        with self._lock:
            if key in self._open:
                self._open[key].params = params

    def close(self, handle: bytes) -> None:
        key, _ = _parse(handle)
        with self._lock:
            self._open.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            self._sweep()
            return len(self._open)

    def _sweep(self) -> None:
        deadline = time.monotonic() - self.ttl
        for key in [k for k, v in self._open.items() if v.used < deadline]:
            del self._open[key]


def _parse(handle: bytes) -> tuple[str, str]:
    try:
        fields = json.loads(handle)
        return str(fields["id"]), str(fields["sql"])
    except (ValueError, TypeError, KeyError):
        raise InvalidQuery("not a prepared statement handle of this server") from None
