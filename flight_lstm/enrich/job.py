"""One enrichment job: what to run, where to write it, how to keep it incremental, and when.
Built the same way from command-line options and from a jobs file (TOML):

    [jobs.reviews]                      # [defaults] may hold any field shared by every job
    source = "duckdb:///abs/lake.db"
    sql = "SELECT id, sentiment(review) AS sentiment FROM reviews"
    key = "id"                          # or ["a", "b"] / "a,b"
    into = "reviews_scored"
    every = "15m"                       # or cron = "*/15 * * * *"; neither: run once
    watermark = "updated_at"            # optional
    rescore_on_model_change = true      # optional
    chunk_rows = 10000                  # optional
    engine = "local"                    # optional; "ray" runs it on a Ray cluster (ray_engine.py),
                                        # with optional ray_address = "auto" and ray_workers = 4
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from flight_lstm.enrich.schedule import Schedule
from flight_lstm.errors import FlightLSTMError

CHUNK_ROWS = 10_000
ENGINES = ("local", "ray")


class JobError(FlightLSTMError):
    """A job is incompletely or inconsistently described."""


@dataclass(frozen=True)
class Job:
    name: str
    source: str
    sql: str
    keys: tuple[str, ...]
    into: str
    watermark: str | None = None
    rescore_on_model_change: bool = False
    chunk_rows: int = CHUNK_ROWS
    schedule: Schedule | None = None
    engine: str = "local"
    ray_address: str | None = None
    ray_workers: int | None = None

    @classmethod
    def from_options(cls, name: str, options: dict) -> "Job":
        options = {k.replace("-", "_"): v for k, v in options.items() if v is not None}
        missing = [k for k in ("source", "sql", "key", "into") if not options.get(k)]
        if missing:
            raise JobError(f"job {name!r} needs {', '.join(missing)}")
        known = {f.name for f in fields(cls)} | {"key", "every", "cron"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise JobError(f"job {name!r}: unknown field(s) {', '.join(unknown)}")
        key = options.pop("key")
        keys = tuple(k.strip() for k in (key.split(",") if isinstance(key, str) else key) if k.strip())
        if not keys:
            raise JobError(f"job {name!r}: --key names no column")
        try:
            schedule = Schedule.parse(every=options.pop("every", None), cron=options.pop("cron", None))
        except ValueError as e:
            raise JobError(f"job {name!r}: {e}") from None
        chunk_rows = int(options.pop("chunk_rows", CHUNK_ROWS))
        if chunk_rows < 1:
            raise JobError(f"job {name!r}: chunk_rows must be at least 1")
        engine = options.pop("engine", "local")
        if engine not in ENGINES:
            raise JobError(f"job {name!r}: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if engine != "ray" and {"ray_address", "ray_workers"} & set(options):
            raise JobError(f"job {name!r}: ray_address and ray_workers need engine ray")
        workers = options.pop("ray_workers", None)
        if workers is not None and int(workers) < 1:
            raise JobError(f"job {name!r}: ray_workers must be at least 1")
        return cls(name=name, keys=keys, schedule=schedule, chunk_rows=chunk_rows, engine=engine,
                   ray_workers=None if workers is None else int(workers), **options)


def load_jobs(path: Path, only: str | None = None) -> list[Job]:
    """The jobs of a TOML file, in file order (or just `only`)."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise JobError(f"cannot read jobs file {path}: {e}") from None
    defaults, jobs = document.get("defaults", {}), document.get("jobs", {})
    if only is not None and only not in jobs:
        raise JobError(f"no job {only!r} in {path}; jobs: {', '.join(jobs) or 'none'}")
    return [Job.from_options(name, {**defaults, **options}) for name, options in jobs.items()
            if only in (None, name)]
