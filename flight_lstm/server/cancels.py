"""Running DoGets a client may stop by their FlightInfo (CancelFlightInfo), as a disconnect would.

Tickets are stateless, so a FlightInfo names its queries by their tickets: each DoGet is kept here
under its user and ticket while it streams, and a cancel stops that user's DoGets of those tickets.
Another user's query with the same ticket is not theirs to stop.
"""
from __future__ import annotations

import threading
import weakref
from typing import Callable, Iterable, Iterator


class _Running:
    def __init__(self):
        self.cancelled = False


class Cancels:
    def __init__(self):
        self._running: dict[tuple[str | None, bytes], set[_Running]] = {}
        self._lock = threading.Lock()

    def start(self, user: str | None, ticket: bytes) -> tuple[Callable[[], bool], Callable[[], None]]:
        """(whether it was cancelled, the call that forgets it once it ends)."""
        key, running = (user, ticket), _Running()
        with self._lock:
            self._running.setdefault(key, set()).add(running)

        def end() -> None:
            with self._lock:
                found = self._running.get(key, set())
                found.discard(running)
                if not found:
                    self._running.pop(key, None)

        return (lambda: running.cancelled), end

    def cancel(self, user: str | None, tickets: Iterable[bytes]) -> int:
        """Mark `user`'s running DoGets of `tickets` cancelled; how many there were."""
        with self._lock:
            found = [r for t in tickets for r in self._running.get((user, t), ())]
        for running in found:
            running.cancelled = True
        return len(found)


def ending(batches: Iterator, end: Callable[[], None]) -> Iterator:
    """The batches, then `end` however the stream ends; closing it closes `batches`. A stream
    dropped before its first batch (its client gone before the schema was sent) never runs a
    `finally`: `end` is also tied to its lifetime, or every such DoGet stayed here with its ticket."""
    stream = _ending(batches, end)
    weakref.finalize(stream, end)
    return stream


def _ending(batches: Iterator, end: Callable[[], None]) -> Iterator:
    try:
        yield from batches
    finally:
        end()
