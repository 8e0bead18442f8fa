"""Scheduled enrichment: run a query with operators and write its rows to a target, only for
keys not yet there, exactly once per key, with lineage, once or on a schedule.

    jobs (job.py) -> run (runner.py: lineage.py, lock.py, progress.py; scoring.py, or
    ray_engine.py on a cluster) -> sinks
    The run plans and scores through the Service; its incremental filter is a planner step
    (plan/increment.py).
    schedules (schedule.py) drive runs (scheduler.py)
"""
from flight_lstm.enrich.job import Job, JobError, load_jobs
from flight_lstm.enrich.lock import TargetBusy
from flight_lstm.enrich.progress import Summary
from flight_lstm.enrich.runner import run
from flight_lstm.enrich.scheduler import run_scheduled

__all__ = ["Job", "JobError", "Summary", "TargetBusy", "load_jobs", "run", "run_scheduled"]
