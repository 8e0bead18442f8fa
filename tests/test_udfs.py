"""The operators called in-process on Arrow arrays, as Python users and the engine call them."""
import math

import numpy as np
import pyarrow as pa
import pytest

from udfs import forecast, forecast_interval, sentiment, sentiment_label, sentiment_probs


def test_sentiment_scores_in_range_with_nulls_kept():
    texts = pa.array(["a wonderful , moving film", "a dull , awful mess", None, "", "   "])
    scores = sentiment(texts)
    assert scores.type == pa.float64() and len(scores) == 5
    good, bad = scores[0].as_py(), scores[1].as_py()
    assert -1 <= bad < 0 < good <= 1
    assert scores.null_count == 3


def test_label_is_the_most_probable_class_and_the_score_their_difference():
    texts = pa.array(["great fun", "terrible and boring", "it isn't bad", "a film", "the parcel came on monday",
                      None, ""])
    scores, labels = sentiment(texts).to_pylist(), sentiment_label(texts).to_pylist()
    probs = sentiment_probs(texts)
    assert probs.type == pa.struct([("negative", pa.float64()), ("neutral", pa.float64()), ("positive", pa.float64())])
    for s, label, p in zip(scores, labels, probs.to_pylist()):
        if s is None:
            assert label is None and p is None
            continue
        assert sum(p.values()) == pytest.approx(1) and min(p.values()) >= 0
        assert label == max(p, key=p.get) and s == pytest.approx(p["positive"] - p["negative"])
        assert label != "positive" or s > 0
        assert label != "negative" or s < 0
    assert labels[:2] == ["positive", "negative"] and labels[4] == "neutral"


def test_raw_and_treebank_spellings_score_alike():
    raw = sentiment(pa.array(["It isn't funny (at all)."])).to_pylist()[0]
    treebank = sentiment(pa.array(["it is n't funny -lrb- at all -rrb- ."])).to_pylist()[0]
    assert raw == pytest.approx(treebank, abs=1e-6)


def test_huge_and_odd_texts_get_a_value():
    texts = pa.array(["good " * 200_000, "😍🎬 \u0000 \x07", "ok" * 10])
    scores = sentiment(texts).to_pylist()
    assert all(s is None or -1 <= s <= 1 for s in scores)
    assert scores[0] is not None


def test_accepts_chunked_and_large_strings():
    chunked = pa.chunked_array([["great"], ["awful", None]])
    assert sentiment(chunked).to_pylist() == sentiment(pa.array(["great", "awful", None])).to_pylist()
    large = pa.array(["great", None], pa.large_string())
    assert sentiment(large).null_count == 1


def _series(n, rows=3, seed=0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return [list(100 + 30 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, n)) for _ in range(rows)]


def test_forecast_gives_exactly_horizon_values_per_series():
    out = forecast(pa.array(_series(200)), 24)
    assert out.type == pa.list_(pa.float64())
    assert [len(v) for v in out.to_pylist()] == [24, 24, 24]
    assert all(math.isfinite(x) for v in out.to_pylist() for x in v)


def test_forecast_follows_a_daily_cycle():
    series = _series(24 * 14, rows=1)
    predicted = np.array(forecast(pa.array(series), 24).to_pylist()[0])
    last_day = np.array(series[0][-24:])
    assert np.corrcoef(predicted, last_day)[0, 1] > 0.8


def test_forecast_nulls_empties_and_per_row_horizons():
    values = pa.array([[1.0, 2.0, 3.0], None, [], [float("nan")] * 4, [5.0]], pa.list_(pa.float64()))
    horizons = pa.array([2, 3, 3, 3, None], pa.int32())
    out = forecast(values, horizons).to_pylist()
    assert len(out[0]) == 2
    assert out[1] is None and out[2] is None and out[3] is None and out[4] is None
    assert [len(v) for v in forecast(pa.array([[1.0, 2.0], [3.0, 4.0]]), pa.array([1, 5])).to_pylist()] == [1, 5]


@pytest.mark.parametrize("horizon", [0, -3, 10**7])
def test_forecast_rejects_impossible_horizons(horizon):
    with pytest.raises(ValueError, match="horizon"):
        forecast(pa.array(_series(50, rows=1)), horizon)


@pytest.mark.parametrize("horizon, model, message", [
    (8761, None, "horizon 8761 is more than 8760 steps, the most a forecast takes"),
    (11, "yearly", r"horizon 11 is more than 10 years of yearly steps \(10\)"),  # forecast_table's words and rule
])
def test_forecast_horizons_follow_the_one_rule(horizon, model, message):
    with pytest.raises(ValueError, match=message):
        forecast(pa.array(_series(50, rows=1)), horizon, model)


def test_forecast_interval_structure_and_order():
    out = forecast_interval(pa.array(_series(100, rows=2)), 6, 0.9)
    assert out.type.value_type.names == ["step", "mean", "lo", "hi"]
    rows = out.to_pylist()
    assert [p["step"] for p in rows[0]] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        for p in row:
            assert p["lo"] <= p["mean"] <= p["hi"]
    wide = forecast_interval(pa.array(_series(100, rows=1)), 6, 0.99).to_pylist()[0]
    narrow = forecast_interval(pa.array(_series(100, rows=1)), 6, 0.5).to_pylist()[0]
    assert all(w["hi"] - w["lo"] >= n["hi"] - n["lo"] for w, n in zip(wide, narrow))


def test_interval_mean_equals_point_forecast():
    series = pa.array(_series(120, rows=2))
    points = forecast(series, 12).to_pylist()
    means = [[p["mean"] for p in row] for row in forecast_interval(series, 12, 0.8).to_pylist()]
    np.testing.assert_allclose(points, means)


def test_named_model_is_the_default_and_unknown_is_an_error():
    from udfs.base import registry
    from flight_lstm.models import ModelNotFound

    card = registry().resolve("sentiment")
    texts = pa.array(["fine work"])
    assert sentiment(texts, f"{card.name}@{card.version}").equals(sentiment(texts))
    with pytest.raises(ModelNotFound):
        sentiment(texts, "no-such-model")
