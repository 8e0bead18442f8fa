"""The shipped forecasters, one per frequency group: found by frequency, forecasting series of their
frequency, with intervals scaled per series and per step, and honest about tiny series."""
import numpy as np
import pyarrow as pa
import pytest

from flight_lstm import frequencies
from flight_lstm.models import Registry
from flight_lstm.models.registry import PACKAGED_WEIGHTS
from flight_lstm.models.series import error_scale, interleave, split_phases, to_arrow
from udfs import forecast_interval

SHIPPED = {  # frequency -> the shipped model that serves it
    "hourly": "m4-hourly-lstm", "30min": "m4-hourly-lstm", "15min": "m4-hourly-lstm",
    "10min": "m4-hourly-lstm", "5min": "m4-hourly-lstm", "daily": "nn5-daily-lstm",
    "business_daily": "nn5-business-daily-lstm", "weekly": "m4-weekly-lstm",
    "monthly": "tourism-monthly-lstm", "quarterly": "tourism-quarterly-lstm",
    "yearly": "tourism-yearly-lstm",
}
GROUPS = ("hourly", "daily", "business_daily", "weekly", "monthly", "quarterly", "yearly")


@pytest.fixture(scope="module")
def registry():
    return Registry([PACKAGED_WEIGHTS])


def seasonal(freq: str, length: int, seed: int = 0, level: float = 100.0) -> np.ndarray:
    """A series of `freq`: its seasonal cycle (none for yearly), a gentle trend and noise."""
    period = frequencies.period_of(freq)
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    cycle = np.sin(2 * np.pi * t / period) if period > 1 else 0.0
    return level * (1 + 0.3 * cycle + 0.3 * t / length) + rng.normal(0, 0.02 * level, length)


LENGTHS = {"hourly": 24 * 30, "daily": 7 * 60, "business_daily": 5 * 60, "weekly": 52 * 4,
           "monthly": 12 * 12, "quarterly": 4 * 15, "yearly": 30}


@pytest.mark.parametrize("freq, name", sorted(SHIPPED.items()) + [("12", "tourism-monthly-lstm"),
                                                                  ("7", "nn5-daily-lstm"), ("96", "m4-hourly-lstm")])
def test_the_registry_resolves_each_frequency_to_its_shipped_model(registry, freq, name):
    assert registry.resolve("forecast", freq).name == name


@pytest.mark.parametrize("freq", GROUPS)
def test_each_card_tells_its_data_command_seed_and_scores(registry, freq):
    card = registry.resolve("forecast", freq)
    assert freq in card.frequencies and card.kind == "forecast"
    training = card.training
    assert training["command"].startswith("flight-lstm train forecast --freq " + freq)
    assert training["seed"] == 0 and training["data_files"][0]["sha256_16"]
    assert training["training_seconds"] < 30 * 60
    sets = card.metrics["sets"]
    assert sets, "scored on at least its own held-back data"
    for scores in sets.values():
        assert {"model", "seasonal_naive", "naive2"} <= set(scores)
        assert 0 < scores["model"]["coverage_95"] <= 1 and scores["model"]["msis_95"] > 0


@pytest.mark.parametrize("freq", GROUPS)
def test_each_model_forecasts_its_frequency_better_than_a_flat_line(registry, freq):
    model = registry.load("forecast", freq)
    horizon = model.horizon
    series = [seasonal(freq, LENGTHS[freq] + horizon, seed=s, level=10.0 ** s) for s in range(4)]
    history, actual = [s[:-horizon] for s in series], np.stack([s[-horizon:] for s in series])
    r = model.predict(to_arrow(history), horizon, 0.95, period=frequencies.period_of(freq))
    flat = np.stack([np.full(horizon, h.mean()) for h in history])
    scale = np.abs(actual).mean(axis=1, keepdims=True)
    ours, trivial = (np.abs(r.mean - actual) / scale).mean(), (np.abs(flat - actual) / scale).mean()
    assert ours < 0.7 * trivial, (ours, trivial)
    assert np.all(r.lo <= r.mean) and np.all(r.mean <= r.hi)


@pytest.mark.parametrize("freq", GROUPS)
def test_interval_widths_grow_with_the_series_scale_and_with_the_step(registry, freq):
    model = registry.load("forecast", freq)
    x = seasonal(freq, LENGTHS[freq], seed=3)
    noisy = x + np.random.default_rng(4).normal(0, 10, len(x))
    r = model.predict(to_arrow([x, 1000 * x, noisy]), 2 * model.horizon, 0.95)
    width = r.hi - r.lo
    assert np.allclose(width[1], 1000 * width[0], rtol=1e-3)
    assert np.all(width[2] > width[0])  # a noisier series gets wider bounds
    assert np.all(np.diff(width, axis=1) >= -1e-9 * width[:, 1:])  # never narrower further ahead
    assert width[0, -1] > width[0, 0]


@pytest.mark.parametrize("freq", GROUPS)
def test_one_or_two_points_get_null_or_wide_bounds(freq):
    rows = [[5.0], [5.0, 5.0], [3.0, 3.0001], [0.0], [-2.0, -2.0]]
    out = forecast_interval(pa.array(rows), 3, 0.95, freq).to_pylist()
    for row, steps in zip(rows, out):
        level = abs(np.mean(row))
        for s in steps:
            assert (s["lo"] is None and s["hi"] is None) or s["hi"] - s["lo"] >= 0.5 * level > 0, (row, s)
    assert all(s["lo"] is None for s in out[3])  # nothing to size bounds by


def test_sub_hourly_series_are_forecast_phase_by_phase():
    t = np.arange(96 * 10)
    x = 100 + 30 * np.sin(2 * np.pi * t / 96) + np.random.default_rng(0).normal(0, 1, len(t))
    out = forecast_interval(pa.array([list(x)]), 96, 0.9, "15min").to_pylist()[0]
    mean = np.array([s["mean"] for s in out])
    future = 100 + 30 * np.sin(2 * np.pi * (len(t) + np.arange(96)) / 96)
    assert np.abs(mean - future).mean() < 3


def test_phases_split_and_weave_back():
    values, lengths = np.arange(10.0), np.array([7, 3])
    v, n = split_phases(values, lengths, 2)
    assert list(n) == [3, 4, 1, 2]  # row 0 (0..6): phase 0 is 1, 3, 5; phase 1 is 0, 2, 4, 6
    assert list(v[:7]) == [1, 3, 5, 0, 2, 4, 6] and list(v[7:]) == [8, 7, 9]
    parts = np.array([[10, 12], [11, 13], [20, 22], [21, 23]], float)  # each phase's next steps
    assert interleave(parts, 2, 3).tolist() == [[10, 11, 12], [20, 21, 22]]


def test_error_scale_is_wide_for_tiny_series_and_null_without_a_level():
    x = np.array([[0, 0, 5.0], [0, 5, 5.0], [0, 0, 0.0], [1, 3, 5.0]])
    obs = np.array([[0, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 1]], bool)
    s = error_scale(x, obs, 2)
    assert s[0] == 5 and s[1] == 5 and np.isnan(s[2]) and s[3] == 4  # lag 2: |5 - 1|
