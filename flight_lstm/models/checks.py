"""A caller's check that models run between their inference batches, so a long model call can
be stopped (the check raises) without cutting its input into many smaller, slower calls."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar

_between_batches: ContextVar[Callable[[], None] | None] = ContextVar("between_batches", default=None)


@contextmanager
def checked_between_batches(check: Callable[[], None]):
    """Within this block (this thread only), models call `check` before each inference batch."""
    token = _between_batches.set(check)
    try:
        yield
    finally:
        _between_batches.reset(token)


def between_batches() -> None:
    """Called by a model's inference loop before every batch."""
    check = _between_batches.get()
    if check is not None:
        check()
