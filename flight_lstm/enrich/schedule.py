"""When a job runs again: a fixed interval (`--every 15m`) or a cron expression (croniter)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Schedule:
    every: float | None = None  # seconds between starts
    cron: str | None = None

    @classmethod
    def parse(cls, *, every: str | float | None = None, cron: str | None = None) -> "Schedule | None":
        """None when neither is given (the job runs once)."""
        if every is not None and cron is not None:
            raise ValueError("give --every or --cron, not both")
        if cron is not None:
            from croniter import croniter

            if not croniter.is_valid(cron):
                raise ValueError(f"not a cron expression: {cron!r}")
            return cls(cron=cron)
        if every is not None:
            return cls(every=parse_interval(every))
        return None

    def first(self, now: datetime) -> datetime:
        """An interval schedule starts at once; a cron schedule at its next time."""
        return now if self.every is not None else self.next(now)

    def next(self, after: datetime) -> datetime:
        if self.every is not None:
            return after + timedelta(seconds=self.every)
        from croniter import croniter

        return croniter(self.cron, after).get_next(datetime)

    def __str__(self) -> str:
        return f"every {self.every:g}s" if self.every is not None else f"cron {self.cron!r}"


def parse_interval(text: str | float) -> float:
    """'90s', '15m', '1.5h', '1d' or a number of seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if not found or float(found.group(1)) <= 0:
        raise ValueError(f"not an interval: {text!r} (use e.g. 30s, 15m, 1h, 1d)")
    return float(found.group(1)) * UNITS[found.group(2) or "s"]
