"""One thread that looks every tick, only while there is something to look at.

The query watchdog and the silent-client deadline each need a thread that wakes every tick, but
a thread per query cost a short query ~2 ms, and an idle server should hold none. A Ticker starts
its thread when the first thing is watched and lets it end after a tick with nothing watched."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Ticker:
    """`due()` runs every `tick` seconds under `lock` (which also guards what its owner watches)
    and returns what is due, or None when nothing is watched; `act(due)` then runs outside it,
    so acting may unwatch."""

    def __init__(self, name: str, tick: float, due: Callable[[], list | None], act: Callable[[list], None]):
        self.name, self.tick, self._due, self._act = name, tick, due, act
        self.lock = threading.Lock()
        self._running = False

    def start(self) -> None:
        """Under `lock`, after watching something: start the thread unless it runs. Raises when no
        thread can be started; the next call tries again."""
        if not self._running:
            threading.Thread(target=self._run, name=self.name, daemon=True).start()
            self._running = True

    def _run(self) -> None:
        try:
            idle = False
            while True:
                time.sleep(self.tick)
                with self.lock:
                    due = self._due()
                    if due is None:
                        if idle:
                            self._running = False
                            return
                        idle = True
                        continue
                    idle = False
                self._act(due)
        except BaseException:  # never; but a dead thread must not look alive to what is watched next
            with self.lock:
                self._running = False
            log.exception("%s stopped", self.name)
