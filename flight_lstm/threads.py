"""How many threads torch and DuckDB get, from the CPUs this process may really use: its CPU
affinity, capped by a cgroup CPU quota (a container's `--cpus`), which torch and DuckDB do not
read (torch counts the machine's cores).

Batch tools give torch one CPU fewer than that, at least one: its OpenMP threads meet at a
barrier after every step of the LSTM, so one thread that has to wait for a core stalls them all.
With another process holding one of two cores, torch's default two threads made `flight-lstm
enrich` 25 times slower (40.2 s against 1.6 s with one thread, issue #22); a spare CPU leaves
every torch thread a core. The server gives torch every CPU: on an idle 2-core machine one torch
thread served 11% fewer sentiment rows/s and 26% fewer forecast series/s than two, and a server
did not show the slowdown (its operator calls are lifted out of DuckDB's threads). DuckDB gets every CPU: its workers take tasks from a queue and do not wait for each other,
and while a lifted operator scores a batch (plan/lift.py) DuckDB's threads are idle.

Every entry point calls `size` first (`--threads N` stands for N CPUs); DuckDB takes its share
when an engine opens its database, torch when the first model loads (`size_torch`, from
udfs/base.py), so the Python operators used alone are sized too. OMP_NUM_THREADS, when set,
still decides torch's threads."""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Threads:
    cpus: int
    torch: int
    duckdb: int
    why: str  # where `cpus` came from, for the log line

    def describe(self) -> str:
        torch = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}" if os.environ.get("OMP_NUM_THREADS") else self.torch
        return f"threads: torch {torch}, DuckDB {self.duckdb} ({self.why})"


def plan(cpus: int | None = None, spare: bool = True) -> Threads:
    """The split for `cpus` CPUs (a user's --threads), else for the CPUs this process may use;
    `spare` keeps one CPU from torch (batch tools), else torch gets them all (the server)."""
    if cpus is not None:
        if cpus < 1:
            raise ValueError(f"--threads is a number of CPUs, 1 or more; got {cpus}")
        why = f"--threads {cpus}"
    else:
        affinity, quota = len(os.sched_getaffinity(0)), cgroup_cpus()
        cpus = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
        why = (f"{cpus} CPUs: affinity {affinity}, "
               + ("no cgroup CPU quota" if quota is None else f"cgroup CPU quota {quota:g}"))
    return Threads(cpus=cpus, torch=max(1, cpus - 1) if spare else cpus, duckdb=cpus, why=why)


def cgroup_cpus() -> float | None:
    """The tightest CPU quota of this process's cgroup and its parents, in CPUs (cgroup v2
    `cpu.max`, else v1 `cpu.cfs_quota_us / cpu.cfs_period_us`); None when there is none."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            quotas += [_v2_quota(d / "cpu.max") for d in _dirs(CGROUP_ROOT, path)]
        elif "cpu" in controllers.split(","):
            mount = CGROUP_ROOT / controllers
            quotas += [_v1_quota(d) for d in _dirs(mount if mount.is_dir() else CGROUP_ROOT / "cpu", path)]
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _dirs(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its parents up to the mount. In a container the path may be the
    host's while the mount is the container's own cgroup: then only the mount itself is found."""
    own = mount / path.strip("/")
    return [d for d in (own, *own.parents) if d == mount or mount in d.parents]


def _v2_quota(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


_lock = threading.Lock()
_planned: Threads | None = None
_torch_sized = False


def size(cpus: int | None = None, spare: bool = True) -> Threads:
    """An entry point's first step: plan this process's threads and log the plan. torch gets its
    share now if it is loaded, else when the first model loads."""
    global _planned, _torch_sized
    with _lock:
        _planned, _torch_sized = plan(cpus, spare), False
    log.info(_planned.describe())
    if "torch" in sys.modules:
        size_torch()
    return _planned


def planned() -> Threads:
    """The entry point's plan; a process that had none (the operators used alone) plans now."""
    global _planned
    with _lock:
        if _planned is None:
            _planned = plan()
        return _planned


def duckdb_threads() -> int:
    return planned().duckdb


def size_torch() -> None:
    """Give torch its share, once per plan; cheap after that, since it runs before every model
    load. Imports torch."""
    global _torch_sized
    if _torch_sized:
        return
    threads = planned()
    with _lock:
        if _torch_sized:
            return
        import torch

        if not os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(threads.torch)
        _torch_sized = True
