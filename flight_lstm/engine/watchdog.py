"""One thread that stops the queries whose budget says so."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from flight_lstm.engine.running import Running

log = logging.getLogger(__name__)


class Watchdog:
    """Stops each running query whose budget says so: interrupts DuckDB, mid-operator too, and
    ends a query that waits on a silent client (`Running.stop`).

    One thread serves all of an engine's queries, so a query starts and joins no thread of its
    own (that cost a short query ~2 ms); the thread ends once nothing is watched for a tick."""

    TICK = 0.1  # seconds between looks: how late a cancel or time limit may act

    def __init__(self):
        self._watched: dict[int, Running] = {}
        self._lock = threading.Lock()
        self._running = False

    def watch(self, running: Running) -> Callable[[], None]:
        """Guard `running` until the returned call, which also interrupts whatever still runs on it."""
        with self._lock:
            if not self._running:  # started before the query counts as watched: if it cannot start
                threading.Thread(target=self._run, name="flight-lstm-watchdog", daemon=True).start()
                self._running = True  # (no thread left), the query fails and the next one tries again
            self._watched[id(running)] = running

        def unwatch() -> None:
            with self._lock:
                self._watched.pop(id(running), None)
            running.con.interrupt()

        return unwatch

    def _run(self) -> None:
        try:
            self._watch_until_idle()
        except BaseException:  # never: but a dead watchdog must not look alive to the next query
            with self._lock:
                self._running = False
            raise

    def _watch_until_idle(self) -> None:
        idle = False
        while True:
            time.sleep(self.TICK)
            with self._lock:
                if not self._watched:
                    if idle:
                        self._running = False
                        return
                    idle = True
                    continue
                idle = False
                due = [r for r in self._watched.values() if r.due()]
            for r in due:  # outside the lock (ending a query unwatches it); again each tick until it ends
                try:
                    r.stop()
                except Exception:  # it ended on its own thread since it was listed: its cursor is closed
                    log.debug("a query ended while the watchdog stopped it", exc_info=True)
