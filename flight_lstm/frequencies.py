"""Forecast frequencies: their names, seasonal periods and lengths, shared by the plan
(`forecast_table`, which infers them from timestamps) and the models (which pick and read them).

A frequency reference is a name below (case-insensitive) or a seasonal period as a whole number
(e.g. '12'). It is what `forecast_table(..., freq => ...)` takes, and what the operators take
in place of a model reference (`forecast(values, 12, 'monthly')`): the registry resolves it to
the model for that frequency.
"""
from __future__ import annotations

from dataclasses import dataclass

DAYS_PER_YEAR = 365.25
# The horizon rule, for the planner and the operators alike (`horizon_cap`, `horizon_limit`): at
# most MAX_YEARS years of a frequency's steps, and never more than MAX_STEPS steps. An operator
# call computes each of its series' horizon steps at once, before any row limit counts them (up to
# 2,048 series, DuckDB's vector, times the horizon times a few arrays of doubles: 143 MB each at
# MAX_STEPS), and rolls forward one model horizon (48 hourly steps) per network call.
MAX_YEARS = 10
MAX_STEPS = 8760  # a year of hourly steps
MAX_PERIOD = 100_000  # a seasonal period given as a number: 1..MAX_PERIOD


@dataclass(frozen=True)
class Frequency:
    name: str
    period: int  # seasonal period in steps (1: no seasonality)
    steps_per_year: float
    minutes: int | None = None  # a fixed step, for sub-daily frequencies; else a calendar step

    @property
    def max_horizon(self) -> int:
        """MAX_YEARS years of steps (a horizon is also held to MAX_STEPS: `horizon_cap`)."""
        return int(MAX_YEARS * self.steps_per_year + 1e-9)


def _sub_daily(minutes: int, name: str) -> Frequency:
    return Frequency(name, 24 * 60 // minutes, DAYS_PER_YEAR * 24 * 60 / minutes, minutes)


# Finest first. Sub-daily steps are fixed durations; daily and longer follow the calendar.
FREQUENCIES: dict[str, Frequency] = {f.name: f for f in (
    _sub_daily(5, "5min"),
    _sub_daily(10, "10min"),
    _sub_daily(15, "15min"),
    _sub_daily(30, "30min"),
    _sub_daily(60, "hourly"),
    Frequency("daily", 7, DAYS_PER_YEAR),
    Frequency("business_daily", 5, DAYS_PER_YEAR * 5 / 7),  # Monday to Friday
    Frequency("weekly", 52, DAYS_PER_YEAR / 7),
    Frequency("monthly", 12, 12),
    Frequency("quarterly", 4, 4),
    Frequency("yearly", 1, 1),
)}
NAMES = tuple(FREQUENCIES)


def by_period(period: int) -> Frequency | None:
    """The named frequency with this seasonal period, if one has it (each period is one name's)."""
    return next((f for f in FREQUENCIES.values() if f.period == period), None)


def horizon_cap(freq: str | None = None) -> int:
    """The most steps a horizon may take for a series of the frequency named (None: of any)."""
    return min(MAX_STEPS, FREQUENCIES[freq].max_horizon) if freq else MAX_STEPS


def horizon_limit(freq: str | None = None) -> str:
    """What `horizon_cap(freq)` is, as the one message refusing a longer horizon ends:
    'horizon => 121 is more than 10 years of monthly steps (120)'."""
    cap = horizon_cap(freq)
    if cap < MAX_STEPS:
        return f"{MAX_YEARS} years of {freq} steps ({cap})"
    return f"{MAX_STEPS} steps, the most a forecast takes"


def parse(value: str | int) -> str | int:
    """A frequency reference as given: a known name (lower-cased) or a seasonal period (an int).
    ValueError, naming the allowed forms, for anything else."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in FREQUENCIES:
            return text
        if not text.isdigit():
            raise ValueError(f"unknown frequency {value!r}; use one of {', '.join(NAMES)} "
                             f"or a seasonal period (a whole number)")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PERIOD:
        raise ValueError(f"a seasonal period must be a whole number from 1 to {MAX_PERIOD}, got {value!r}")
    return value


def reference(value: str | None) -> str | int | None:
    """The frequency a model reference names, or None when it names a model (or nothing)."""
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError:
        return None


def period_of(freq: str | int) -> int:
    """The seasonal period of a frequency reference."""
    freq = parse(freq)
    return freq if isinstance(freq, int) else FREQUENCIES[freq].period
