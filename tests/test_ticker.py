"""The shared ticking thread (flight_lstm/ticker.py): started on demand, acting on what is due,
gone after an idle tick, and never left looking alive when it died."""
import threading
import time

from flight_lstm.ticker import Ticker

TICK = 0.02


def _alive(name: str) -> bool:
    return any(t.name == name for t in threading.enumerate())


def _until(condition, seconds: float = 2.0) -> bool:
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if condition():
            return True
        time.sleep(TICK / 2)
    return condition()


def test_a_ticker_acts_on_what_is_due_and_its_thread_ends_once_nothing_is_watched():
    watched, acted = {"a": 1, "b": 5}, []
    ticker = Ticker("ticker-test-1", TICK, lambda: [k for k, v in watched.items() if v < 3] if watched else None,
                    acted.extend)
    assert not _alive("ticker-test-1")
    with ticker.lock:
        ticker.start()
        ticker.start()  # one thread however often it is asked
    assert sum(t.name == "ticker-test-1" for t in threading.enumerate()) == 1
    assert _until(lambda: "a" in acted) and "b" not in acted
    with ticker.lock:
        watched.clear()
    assert _until(lambda: not _alive("ticker-test-1"))
    with ticker.lock:
        watched["c"] = 0
        ticker.start()  # a new thread for what is watched next
    assert _until(lambda: "c" in acted)
    with ticker.lock:
        watched.clear()
    assert _until(lambda: not _alive("ticker-test-1"))


def test_a_ticker_whose_act_failed_starts_again_for_the_next_watch():
    calls = []

    def act(due):
        calls.append(due)
        if len(calls) == 1:
            raise RuntimeError("boom")

    ticker = Ticker("ticker-test-2", TICK, lambda: ["x"], act)
    with ticker.lock:
        ticker.start()
    assert _until(lambda: len(calls) == 1 and not _alive("ticker-test-2"))
    with ticker.lock:
        ticker.start()  # the dead thread did not leave it marked as running
    assert _until(lambda: len(calls) >= 2)
    ticker._due = lambda: None
    assert _until(lambda: not _alive("ticker-test-2"))
