"""One thread that stops the queries whose budget says so."""
from __future__ import annotations

import logging
from typing import Callable

import duckdb

from flight_lstm.engine.running import Running
from flight_lstm.ticker import Ticker

log = logging.getLogger(__name__)


class Watchdog:
    """Stops each running query whose budget says so: interrupts DuckDB, mid-operator too, and
    ends a query that waits on a silent client (`Running.stop`).

    One thread serves all of an engine's queries (flight_lstm/ticker.py), so a query starts and
    joins no thread of its own."""

    TICK = 0.1  # seconds between looks: how late a cancel or time limit may act

    def __init__(self):
        self._watched: dict[int, Running] = {}
        self._ticker = Ticker("flight-lstm-watchdog", self.TICK, self._due, self._stop)

    def watch(self, running: Running) -> Callable[[], None]:
        """Guard `running` until the returned call, which also interrupts whatever still runs on it."""
        with self._ticker.lock:
            self._ticker.start()  # before the query counts as watched: if it cannot start (no
            self._watched[id(running)] = running  # thread left), the query fails, the next one tries

        def unwatch() -> None:
            with self._ticker.lock:
                self._watched.pop(id(running), None)
            try:
                running.con.interrupt()
            except duckdb.Error:  # its database was closed under it (engine.py: _renew)
                pass

        return unwatch

    def abandon_on(self, db, reason: Exception) -> None:
        """End every query of database `db` with `reason`, interrupting those mid-step (Running.abandon)."""
        with self._ticker.lock:
            on = [r for r in self._watched.values() if r.db is db]
        for r in on:
            r.abandon(reason)

    def _due(self) -> list[Running] | None:
        return [r for r in self._watched.values() if r.due()] if self._watched else None

    @staticmethod
    def _stop(due: list[Running]) -> None:
        for r in due:  # again each tick until it ends
            try:
                r.stop()
            except Exception:  # it ended on its own thread since it was listed: its cursor is closed
                log.debug("a query ended while the watchdog stopped it", exc_info=True)
