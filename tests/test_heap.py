"""flight_lstm.heap: an operator's large arrays reuse freed memory instead of faulting in fresh pages."""
import subprocess
import sys

import pytest

FORECASTS = """
import resource, sys
import numpy as np
from flight_lstm import heap
from flight_lstm.models.series import to_arrow
from udfs import forecast
if sys.argv[1] == "untuned":
    heap.keep_freed_blocks = lambda: None
rng = np.random.default_rng(0)
series = to_arrow(list(100 + rng.normal(0, 1, (3000, 730)).cumsum(axis=1)))
forecast(series, 56, "daily")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # five more batches of 3,000 daily series
    forecast(series, 56, "daily")
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FORECASTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt thresholds are glibc's")
def test_forecast_batches_reuse_the_heap_instead_of_faulting_pages_in():
    untuned, tuned = page_faults("untuned"), page_faults("tuned")
    assert untuned > 50_000  # glibc maps each large array afresh and unmaps it on free
    assert tuned < untuned / 5
