"""What the user sees: a progress bar (rows/s, ETA) on a terminal, plain structured log lines
otherwise, and one summary per run."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("flight_lstm.enrich")


@dataclass
class Summary:
    job: str
    target: str
    read: int = 0  # candidate rows the query yields
    skipped: int = 0  # already in the target, unchanged
    scored: int = 0  # rows that went through the operators
    written: int = 0  # rows committed
    chunks: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"enrich job={self.job} target={self.target} read={self.read} scored={self.scored} "
                f"written={self.written} skipped={self.skipped} chunks={self.chunks} seconds={self.seconds:.2f}")


class Progress:
    """Counts rows written out of `total`; a tqdm bar when stderr is a terminal."""

    def __init__(self, job: str, total: int):
        self.job, self.total, self.done = job, total, 0
        self.started = time.monotonic()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rows", unit_scale=True, desc=job, file=sys.stderr)

    def update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info("enrich job=%s written=%d/%d rate=%.1f rows/s eta=%.1fs", self.job, self.done, self.total, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
