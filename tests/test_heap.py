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


ANOMALY_SCORES_FROM_A_THREAD = """
import ctypes, resource, sys, threading
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: a fault is a 4 KiB page, however the machine stands
import numpy as np
import pyarrow as pa
from flight_lstm.models import anomaly
from flight_lstm.models.series import to_arrow
from udfs import anomaly_scores
if sys.argv[1] == "whole":
    anomaly.STEPS_PER_CALL = 10**9
rng = np.random.default_rng(0)
series = to_arrow(list(50 + rng.normal(0, 1, (40, 6000))))
level, seed = pa.array(np.full(40, 0.999)), pa.array(np.zeros(40, np.int64))
faults = []
def score():  # as a server does: on a thread other than the main one
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    anomaly_scores(series, level, seed)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
for _ in range(2):
    thread = threading.Thread(target=score)
    thread.start()
    thread.join()
print(faults[-1])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's per-thread heaps")
def test_anomaly_scores_on_a_server_thread_reuse_the_heap():
    """A thread's own glibc heap keeps freed blocks only under 64 MB: the anomaly network reads
    its 256 runs in parts of STEPS_PER_CALL steps, so its tensors are not mapped afresh. Huge pages
    are off in the measuring process: numpy and torch ask for them on large arrays, and whether the
    kernel has any free decided the count (520-35,000 in parts on an idle machine, 64,500-74,500
    late in a full test run); with 4 KiB pages, whole runs 277,000, parts 88,000 (@4's code 76,000),
    the rest being the statistic's numpy arrays."""
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", ANOMALY_SCORES_FROM_A_THREAD, mode],
                             capture_output=True, text=True, check=True)
        return int(out.stdout)

    whole, parts = faults("whole"), faults("parts")
    assert whole > 50_000  # over whole runs, the LSTM's gates alone are 268 MB a batch
    assert parts < whole / 2.5
