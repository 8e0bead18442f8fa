"""Keep jobs running on their schedules, one run at a time, until told to stop.

A run that finds the target busy, the source unavailable or the target's file system refusing
(full, read-only, a file where its directory goes) is logged and retried at the job's next time;
any other error (bad query, bad target) stops the loop: it would fail every time."""
from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Callable

from flight_lstm.enrich.job import Job
from flight_lstm.enrich.lock import TargetBusy
from flight_lstm.enrich.progress import Summary
from flight_lstm.errors import SourceUnavailable
from flight_lstm.sinks.base import TargetUnavailable

log = logging.getLogger("flight_lstm.enrich")


def run_scheduled(jobs: list[Job], run_one: Callable[[Job], Summary], stop: threading.Event) -> None:
    now = datetime.now().astimezone()
    due = {job.name: job.schedule.first(now) for job in jobs}
    by_name = {job.name: job for job in jobs}
    while not stop.is_set():
        name = min(due, key=due.get)
        if stop.wait(max(0.0, (due[name] - datetime.now().astimezone()).total_seconds())):
            return
        job = by_name[name]
        started = datetime.now().astimezone()
        try:
            log.info(run_one(job).line())
        except (TargetBusy, SourceUnavailable, TargetUnavailable) as e:
            log.warning("enrich job=%s failed this time, will try again: %s", name, e)
        due[name] = job.schedule.next(max(started, due[name]))
        log.info("enrich job=%s next run at %s", name, due[name].isoformat(timespec="seconds"))
