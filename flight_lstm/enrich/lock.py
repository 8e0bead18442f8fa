"""One writer per target: an flock on a file beside it, released by the kernel if the run dies.

The sink chooses the file from the target's resolved path (Sink.lock_path), so every name of
one target (a symlink, a `..`) meets the same lock. The file itself is never a symlink: a run
would otherwise truncate and write whatever file it points to."""
from __future__ import annotations

import errno
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from flight_lstm.errors import FlightLSTMError
from flight_lstm.sinks.base import TargetError, refused


class TargetBusy(FlightLSTMError):
    """Another run is writing the same target."""


@contextmanager
def target_lock(path: Path, target: str, *, wait: bool = False):
    """Hold the target's lock for the block; without `wait`, raise TargetBusy if it is held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TargetError(f"cannot write {target}: its lock file {path} is a symlink; remove it") from None
        raise refused(target, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise TargetBusy(f"another enrichment run (pid {holder}) is writing {target}; this run "
                             f"wrote nothing (pass --wait to queue behind it; lock: {path})") from None
        except OSError as e:  # a file system without locks, a full disk
            raise refused(target, e, path) from None
        yield
    finally:
        os.close(fd)  # closing drops the flock
