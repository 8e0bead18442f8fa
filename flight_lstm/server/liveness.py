"""Whether a call is still on, asked safely from any thread.

`ServerCallContext.is_cancelled` reads the call's C++ context, which is freed when the call ends;
a watchdog thread asking after that crashes the process. This middleware marks the call over
before the context goes, and the check takes the same lock, so it never touches a freed context.
"""
from __future__ import annotations

import threading
from typing import Callable

import pyarrow.flight as flight

KEY = "liveness"


class Liveness(flight.ServerMiddlewareFactory):
    def start_call(self, info, headers):
        return _Call()


class _Call(flight.ServerMiddleware):
    def __init__(self):
        self.lock, self.over = threading.Lock(), False

    def call_completed(self, exception):
        with self.lock:
            self.over = True


def cancelled(context: flight.ServerCallContext) -> Callable[[], bool]:
    """A check, safe from any thread at any time: true once the client cancelled or the call ended."""
    call = context.get_middleware(KEY)

    def check() -> bool:
        with call.lock:
            return call.over or context.is_cancelled()

    return check
