"""Model layer: text normalisation, training, persistence, registry, and forecast robustness."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from flight_lstm.evaluate import naive2, seasonality_test, sentiment_report
from flight_lstm.models import ModelNotFound, Registry, default_registry
from flight_lstm.models.card import ModelCard
from flight_lstm.models.data import custrev_folds, review_folds, sentiment_split
from flight_lstm.models.forecast import MAX_HORIZON, ForecastModel
from flight_lstm.models.data import CLASSES
from flight_lstm.models.sentiment import SentimentModel
from flight_lstm.models.series import fill_gaps, to_arrow
from flight_lstm.models.text import detokenize, tokenize
from flight_lstm.training import (NEUTRAL_BIASES, choose_neutral_bias, fit_forecast, fit_sentiment, fit_three_class,
                                  train_forecast, train_sentiment)
from udfs.base import load_model

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"
POS = ["good", "great", "fun", "moving", "brilliant", "charming"]
NEG = ["bad", "dull", "boring", "awful", "tedious", "clumsy"]
FILL = ["the", "film", "is", "a", "movie", "plot", "it", "and", "with", "story"]


def synthetic_reviews(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = []
    for y in labels:
        words = list(rng.choice(FILL, rng.integers(3, 9))) + list(
            rng.choice(POS if y else NEG, rng.integers(1, 3)))
        texts.append(" ".join(rng.permutation(words)))
    return pa.array(texts), labels


def synthetic_series(n, length, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    level = rng.uniform(10, 1000, (n, 1))
    season = np.sin(2 * np.pi * (t + rng.integers(0, 24, (n, 1))) / 24)
    return list(level * (1 + 0.3 * season + 0.05 * rng.standard_normal((n, length))))


# -- text -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, ptb", [
    ("Isn't it GREAT?", "is n't it great ?"),
    ("(great!)", "-lrb- great ! -rrb-"),
    ("I can't and won't, it's fine.", "i ca n't and wo n't , it 's fine ."),
    ("we've 'seen' it", "we 've ` seen ' it"),
    ("and/or 5*", "and\\/or 5\\*"),
    ("\u201cQuote\u201d \u2014 it\u2019s", "`` quote '' \u2014 it 's"),
])
def test_raw_and_ptb_spellings_tokenize_alike(raw, ptb):
    assert tokenize(pa.array([raw])).to_pylist() == tokenize(pa.array([ptb])).to_pylist()


def test_tokenize_blank_rows_are_null_and_huge_text_is_cut():
    out = tokenize(pa.array([None, "", "  \t ", "ok"], pa.large_string())).to_pylist()
    assert out == [None, None, None, ["ok"]]
    huge = tokenize(pa.array(["word " * 200_000])).to_pylist()[0]
    assert 3_000 < len(huge) <= 4_000  # 20k characters of "word " is 4000 words


def test_detokenize_makes_raw_text_that_tokenizes_back():
    ptb = pa.array(["it 's not -lrb- quite -rrb- what i expected , is n't it ?"])
    raw = detokenize(ptb)
    assert raw.to_pylist() == ["It's not (quite) what i expected, isn't it?"]
    assert tokenize(raw).to_pylist() == tokenize(ptb).to_pylist()


# -- sentiment ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sentiment(tmp_path_factory):
    texts, labels = synthetic_reviews(600, seed=1)
    dev = synthetic_reviews(200, seed=2)
    out = tmp_path_factory.mktemp("models")
    card = train_sentiment(texts, labels, name="tiny-sent", version="1", out_dir=out, epochs=4,
                           dev=dev, embed_dim=16, hidden=16, dropout=0.1, batch_size=32,
                           lr=1e-2, progress=False)
    return card, out, dev


def test_sentiment_training_learns(tiny_sentiment):
    card, _, _ = tiny_sentiment
    history = card.training["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert card.metrics["selection_accuracy"] >= 0.95


def test_sentiment_save_load_identical_and_scores_in_range(tiny_sentiment):
    card, out, dev = tiny_sentiment
    model = Registry([out]).load("sentiment", "tiny-sent@1")
    assert isinstance(model, SentimentModel) and model.card.name == "tiny-sent"
    again = SentimentModel.load(card.path)
    a, b = model.score(dev[0]), again.score(dev[0])
    assert np.array_equal(a, b)
    assert a.dtype == np.float64 and np.all(np.abs(a) <= 1)
    accuracy = np.mean((a > 0) == (dev[1] == 1))
    assert accuracy >= 0.95
    assert round(accuracy, 4) == card.metrics["selection_accuracy"]  # metrics are of the saved model
    assert json.loads((out / "tiny-sent" / "1" / "card.json").read_text())["kind"] == "sentiment"


def test_sentiment_edge_texts(tiny_sentiment):
    model = SentimentModel.load(tiny_sentiment[0].path)
    texts = pa.array([None, "", "   \n", "\U0001F600\U0001F44D", "great fun", "x" * 1_000_000,
                      "good " * 250_000], pa.large_string())
    started = time.perf_counter()
    s = model.score(texts)
    assert time.perf_counter() - started < 10
    assert s.shape == (7,) and np.isnan(s[:3]).all() and np.isfinite(s[3:]).all()
    assert s[4] > 0 and s[6] > 0
    chunked = pa.chunked_array([texts.slice(0, 3), texts.slice(3)])
    assert np.array_equal(model.score(chunked), s, equal_nan=True)
    assert np.allclose(model.score(texts.slice(4, 1)), s[4:5], rtol=1e-6)  # batch-size noise only
    assert np.isnan(model.score(pa.array([None, None]))).all()  # untyped all-null column


def test_sentiment_scores_both_spellings_alike(tiny_sentiment):
    model = SentimentModel.load(tiny_sentiment[0].path)
    s = model.score(pa.array(["it isn't (great!)", "it is n't -lrb- great ! -rrb-"]))
    assert np.isfinite(s).all() and s[0] == pytest.approx(s[1], rel=1e-6)  # same tokens


def test_the_sentiment_model_checks_between_its_inference_batches():
    from flight_lstm.errors import QueryCancelled
    from flight_lstm.models.checks import checked_between_batches
    from flight_lstm.models.sentiment import BATCH_ROWS

    model = default_registry().load("sentiment")
    texts = pa.array([f"a fine film number {i}" for i in range(2 * BATCH_ROWS + 1)])
    checks = []
    with checked_between_batches(lambda: checks.append(1)):
        model.score(texts)
    assert len(checks) == 3  # one per inference batch of at most BATCH_ROWS texts

    def stop():
        if len(checks) == 4:
            raise QueryCancelled("stop")
        checks.append(1)

    with checked_between_batches(stop), pytest.raises(QueryCancelled):
        model.score(texts)
    assert len(checks) == 4 and not model.training  # stopped at its second batch, mode kept


def test_weight_averaging_keeps_the_mean_of_the_last_epochs(monkeypatch):
    import flight_lstm.models.base as base

    seen = []
    mean_state = base._mean_state
    monkeypatch.setattr(base, "_mean_state", lambda states: seen.append(states) or mean_state(states))
    texts, labels = synthetic_reviews(400, seed=7)
    model, info = fit_sentiment(texts, labels, epochs=4, patience=1, average_last=3, embed_dim=16,
                                hidden=16, dropout=0.1, batch_size=32, lr=1e-2, progress=False)
    assert info["epochs_run"] == 4 and info["averaged_epochs"] == [2, 3, 4]  # no early stop
    states = seen[0]
    assert len(states) == 3 and not torch.equal(states[0]["out.weight"], states[2]["out.weight"])
    mean = torch.stack([s["out.weight"] for s in states]).mean(dim=0)
    assert torch.equal(model.out.weight, mean.half().float())  # the mean, stored as float16
    enc = model.encode(texts)
    assert np.isfinite(model.logits(enc)).all() and info["best_val"] <= 0.2


def write_tsv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))


@pytest.fixture
def sentiment_data(tmp_path):
    """A tiny shared-data root: SST-5 sentences, SST-2 phrases of them, reviews, MPQA."""
    sentences = [(f"film {i} is -lrb- very -rrb- good", i % 5) for i in range(20)]
    write_tsv(tmp_path / "sst5" / "train.tsv", sentences)
    write_tsv(tmp_path / "sst2" / "train_phrases.tsv",
              [("film 3 is (very) good", 1), ("film 3", 0), ("(very) good", 1), ("is", 0), ("film 30", 1)])
    write_tsv(tmp_path / "reviews" / "custrev.tsv", [(f"battery {i} works", i % 2) for i in range(10)])
    write_tsv(tmp_path / "reviews" / "mpqa.tsv", [("not happy", 0), ("glad", 1)])
    return tmp_path


def test_sentiment_split_keeps_held_out_sentences_and_their_phrases_out(sentiment_data):
    split = sentiment_split(sentiment_data, fraction=0.1, seed=0)
    held, held_labels = split["held_out"]
    train = split["train"]
    assert len(held) == 2 and not set(held.to_pylist()) & set(train["text"].to_pylist())
    phrases = train.filter(pc.equal(train["source"], "sst2-phrases"))["text"].to_pylist()
    assert "film 30" in phrases and not {"(very) good", "is"} & set(phrases)  # spans of every sentence
    assert ("film 3 is (very) good" in phrases) == ("film 3 is -lrb- very -rrb- good" not in held.to_pylist())
    five = np.array([int(t.split()[1]) % 5 for t in held.to_pylist()])
    assert held_labels.tolist() == [0 if f <= 1 else 1 if f == 2 else 2 for f in five]
    sst5 = train.filter(pc.equal(train["source"], "sst5"))
    assert sst5["binary"].null_count == sst5.num_rows == 18 and sst5["three"].null_count == 0
    reviews = train.filter(pc.equal(train["source"], "custrev"))
    assert reviews["row"].to_pylist() == list(range(10)) and reviews["three"].null_count == 10


def test_augment_masks_words_samples_ngrams_and_names_the_original():
    from flight_lstm.models.teacher import MASK, augment

    texts = ["a quietly moving and often very funny film", "dull but not tedious"]
    out, origin = augment(texts, 50, np.random.default_rng(0))
    assert out == augment(texts, 50, np.random.default_rng(0))[0] and not set(out) & set(texts)
    assert len(out) == len(set(out)) == len(origin) > 20 and set(origin) == {0, 1}
    for text, i in zip(out, origin):
        assert set(text.split()) <= set(texts[i].split()) | {MASK}
    assert any(MASK in t for t in out) and any(len(t.split()) <= 5 for t in out)


PIECES = ["[PAD]", "[UNK]", "un", "##watch", "##able", "watch", "able", "ok", "!", "-"]
CLEAR = {"positive": "a great , moving and fun film", "negative": "a dull , awful and boring film",
         "neutral": "the package arrived on tuesday"}


def tiny_start(vocab, dim):
    """What teacher.student_start returns, without MiniLM: a few pieces, random vectors."""
    return PIECES, torch.randn(len(vocab) + 2 + len(PIECES), dim, generator=torch.Generator().manual_seed(0))


def soft_label_table(n, seed):
    """Positive, negative and factual texts with a teacher that knows them; a third carry only
    the teacher's logits (like augmented copies), and some binary labels stand for reviews."""
    rng = np.random.default_rng(seed)
    facts = ["the", "package", "arrived", "on", "tuesday", "box", "was", "shipped", "monday", "it", "has", "a", "cable"]
    kind = rng.integers(0, 3, n)
    texts = [" ".join(rng.permutation(list(rng.choice(FILL if k != 1 else facts, rng.integers(3, 7)))
                                      + ([] if k == 1 else list(rng.choice(POS if k == 2 else NEG, 2)))))
             for k in kind]
    teacher = np.full((n, 3), -2.0, np.float32)
    teacher[np.arange(n), kind] = 2.0
    three = np.where(np.arange(n) % 3 == 0, kind, -1)
    binary = np.where((np.arange(n) % 3 == 1) & (kind != 1), kind // 2, -1)
    return pa.table({"text": pa.array(texts), "three": pa.array(three, mask=three < 0),
                     "binary": pa.array(binary, mask=binary < 0),
                     "source": pa.array(np.where(np.arange(n) % 3 == 1, "custrev", "sst5")),
                     "row": pa.array(np.arange(n)), "augmented": pa.array(np.arange(n) % 3 == 2),
                     "teacher_logits": pa.FixedSizeListArray.from_arrays(pa.array(teacher.ravel()), 3)}), kind


def test_three_class_distillation_learns_the_teacher_and_reads_unknown_words_as_pieces():
    table, kind = soft_label_table(900, seed=1)
    held = (pa.array(list(CLEAR.values())), np.array([2, 0, 1]))
    model, info = fit_three_class(table, held, epochs=6, average_last=2, embed_dim=16, hidden=16, dropout=0.1,
                                  batch_size=32, lr=1e-2, progress=False, start=tiny_start)
    assert info["history"][-1]["train_loss"] < 0.3 * info["history"][0]["train_loss"]
    probabilities = model.probabilities(table["text"])
    assert np.allclose(probabilities.sum(axis=1), 1) and np.mean(probabilities.argmax(axis=1) == kind) > 0.95
    assert model.probabilities(held[0]).argmax(axis=1).tolist() == [2, 0, 1]
    assert info["neutral_bias"] in NEUTRAL_BIASES and model.config["pieces"] == PIECES
    unknown = model.encode(pa.array(["unwatchable !", "zzz"]))
    words = len(model.vocab) + 2
    assert unknown.lengths.tolist() == [4, 1] and unknown.ids[:4].tolist() == [words + 2, words + 3, words + 4, words + 8]
    assert unknown.ids[4] == 1  # no piece fits: UNK


def test_choose_neutral_bias_lifts_a_neutral_class_the_network_rarely_says():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    logits = rng.normal(0, 1, (600, 3))
    logits[np.arange(600), labels] += 2.0
    logits[:, 1] -= 2.5  # neutral is under-said
    bias = choose_neutral_bias(logits, labels)
    assert 1.5 <= bias <= 3.5
    assert np.mean((logits + [0, bias, 0]).argmax(axis=1) == labels) > np.mean(logits.argmax(axis=1) == labels) + 0.1


def record_fits(monkeypatch) -> list[pa.Table]:
    """Make training.fit_three_class record each training table and return a model that calls
    every text positive."""
    import flight_lstm.training as training

    seen = []

    class Fitted:
        def score(self, texts):
            return np.ones(len(texts))

    def fake_fit(train, held_out, **recipe):
        seen.append(train)
        return Fitted(), {}

    monkeypatch.setattr(training, "fit_three_class", fake_fit)
    return seen


def test_custrev_cross_validation_leaves_each_fold_and_its_copies_out(monkeypatch):
    import flight_lstm.training as training

    table, _ = soft_label_table(300, seed=2)
    seen = record_fits(monkeypatch)
    result = training.custrev_cross_validation(table, (pa.array(["x"]), np.array([1])), folds=5)
    reviews = table.filter(pc.and_(pc.equal(table["source"], "custrev"), pc.invert(table["augmented"])))
    folds = custrev_folds(reviews.num_rows, 5, 0)
    assert len(seen) == 5 and result["n"] == reviews.num_rows
    for k, train in enumerate(seen):
        review_rows = set(train.filter(pc.equal(train["source"], "custrev"))["row"].to_pylist())
        left_out = set(np.sort(reviews["row"].to_numpy())[folds == k].tolist())
        assert not review_rows & left_out and len(review_rows) == reviews.num_rows - len(left_out)
        assert train.filter(pc.equal(train["source"], "sst5")).num_rows == 200  # the rest stays
    positive = reviews["binary"].to_numpy() == 1  # the fake says positive for all
    assert result["accuracy"] == pytest.approx(np.mean(positive), abs=0.02)


def review_soft_labels(n_reviews, seed):
    """Soft-label rows as teacher.soft_labels writes them: labelled customer reviews (POS/NEG
    words), two augmented copies of each, and SST-5 rows; every teacher logit 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n_reviews)
    reviews = [" ".join(rng.permutation(list(rng.choice(FILL, 4)) + list(rng.choice(POS if y else NEG, 2))))
               for y in labels]
    copies = [" ".join(t.split()[1:]) for t in reviews] + [" ".join(t.split()[:-1]) for t in reviews]
    n = 3 * n_reviews + 20
    rows = np.concatenate([np.tile(np.arange(n_reviews), 3), np.arange(20)])
    binary = np.concatenate([labels, np.full(n - n_reviews, -1)])
    return pa.table({"text": pa.array(reviews + copies + ["the film"] * 20),
                     "three": pa.array(np.full(n, -1), mask=np.ones(n, bool)),
                     "binary": pa.array(binary, mask=binary < 0),
                     "source": pa.array(["custrev"] * (3 * n_reviews) + ["sst5"] * 20), "row": pa.array(rows),
                     "augmented": pa.array(np.arange(n) >= n_reviews),
                     "teacher_logits": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(3 * n, np.float32)), 3)})


def test_cross_validation_takes_each_folds_review_teacher(monkeypatch, tmp_path):
    import flight_lstm.training as training

    table = review_soft_labels(50, seed=3)
    fold = review_folds(table)
    for k in range(5):  # review teacher k: positive by k + 1 over negative, on the rows outside fold k
        rows = np.flatnonzero((fold >= 0) & (fold != k))
        review_logits = np.tile(np.float32([0.0, 5.0, k + 1.0]), len(rows))
        pq.write_table(pa.table({"index": pa.array(rows), "teacher_logits": pa.FixedSizeListArray.from_arrays(
            pa.array(review_logits), 3)}), tmp_path / f"fold{k}.parquet")
    seen = record_fits(monkeypatch)
    training.custrev_cross_validation(table, (pa.array(["x"]), np.array([1])), review_teachers=tmp_path)
    assert len(seen) == 5
    for k, train in enumerate(seen):
        logits = np.array(train["teacher_logits"].to_pylist())
        review = pc.equal(train["source"], "custrev").to_numpy(zero_copy_only=False)
        assert review.sum() == np.sum((fold >= 0) & (fold != k)) == 120  # originals and copies, fold k out
        p = torch.from_numpy(logits[review]).softmax(dim=1).numpy()
        assert np.allclose(p[:, 1], 1 / 3, atol=1e-5)  # neutral stays the base teacher's
        assert np.allclose(np.log(p[:, 2] / p[:, 0]), k + 1, atol=1e-4)  # polarity is fold k's teacher's
        assert (logits[~review] == 0).all()


def test_a_review_teacher_learns_the_folds_it_may_see_and_relabels_only_them(monkeypatch, tmp_path):
    from flight_lstm.models import teacher as teacher_module

    class BagOfWords(torch.nn.Module):
        """Stands in for MiniLM: words -> three logits, starting at 0."""

        def __init__(self):
            super().__init__()
            self.ids = {w: i for i, w in enumerate(FILL + POS + NEG)}
            self.bag = torch.nn.EmbeddingBag(len(self.ids), 3, mode="sum")
            torch.nn.init.zeros_(self.bag.weight)

        def forward(self, texts):
            ids = [torch.tensor([self.ids[w.lower()] for w in t.split()]) for t in texts]
            return self.bag(torch.cat(ids), torch.tensor([0, *np.cumsum([len(i) for i in ids])[:-1]]))

        logits = teacher_module.Teacher.logits

    monkeypatch.setattr(teacher_module.Teacher, "load", classmethod(lambda cls, d: BagOfWords()))
    table = review_soft_labels(100, seed=4)
    pq.write_table(table, tmp_path / "soft.parquet")
    out = teacher_module.review_teacher(tmp_path, tmp_path / "soft.parquet", leave_out=2, out_dir=tmp_path,
                                        epochs=5, lr=0.1, batch_size=8)
    written, fold = pq.read_table(out), review_folds(table)
    assert out.name == "fold2.parquet"
    assert sorted(written["index"].to_pylist()) == np.flatnonzero((fold >= 0) & (fold != 2)).tolist()
    info = json.loads(pq.read_schema(out).metadata[b"flight_lstm"])
    assert info["reviews"] == np.sum((fold >= 0) & (fold != 2)) // 3 and info["left_out_accuracy"] > 0.9
    logits = np.array(written["teacher_logits"].to_pylist())
    labels = table["binary"].to_numpy(zero_copy_only=False)[written["index"].to_numpy()]
    original = ~np.isnan(labels)
    assert np.mean((logits[original, 2] > logits[original, 0]) == (labels[original] == 1)) > 0.9


def test_a_one_logit_model_gives_probabilities_without_neutral(tiny_sentiment):
    model = SentimentModel.load(tiny_sentiment[0].path)
    texts = pa.array(["good fun", "awful", None])
    probabilities, score = model.probabilities(texts), model.score(texts)
    assert np.allclose(probabilities[:2].sum(axis=1), 1) and (probabilities[:2, 1] == 0).all()
    assert np.isnan(probabilities[2]).all() and np.isnan(score[2])
    assert np.allclose(score[:2], probabilities[:2, 2] - probabilities[:2, 0])


def test_shipped_sentiment_model_says_three_classes():
    model = default_registry().load("sentiment")
    assert model.card.name == "sentiment-bilstm" and model.classes == 3
    assert "MiniLM" in model.card.training["teacher"]["teacher"]["teacher"]
    probabilities = model.probabilities(pa.array(list(CLEAR.values()) + [None, "   "]))
    assert [CLASSES[i] for i in probabilities[:3].argmax(axis=1)] == list(CLEAR)
    assert np.allclose(probabilities[:3].sum(axis=1), 1) and np.isnan(probabilities[3:]).all()
    assert model.card.metrics["held_out"]["n"] > 800 and len(model.card.metrics["custrev_cv"]["folds"]) == 5


def test_the_previous_sentiment_model_still_loads_by_name():
    model = default_registry().load("sentiment", "sst2-bilstm@4")
    assert model.classes == 1 and model.pieces is None
    s = model.score(pa.array(["A moving, beautifully acted and funny film.",
                              "Dull, tedious and badly written; a waste of time."]))
    assert s[0] > 0.3 and s[1] < -0.3


@pytest.mark.skipif(not SST2.is_dir(), reason="shared SST-2 data not present")
def test_shipped_sentiment_card_is_reproduced_by_evaluate():
    model = default_registry().load("sentiment")
    assert sentiment_report(SST2.parent, model).to_pylist() == model.card.metrics["report"]


# -- registry -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry_dirs(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    texts, labels = synthetic_reviews(64, seed=3)
    for root, name, version in [(second, "sent", "2"), (second, "sent", "10"),
                                (first, "sent", "2"), (second, "sentiment-bilstm", "99")]:
        train_sentiment(texts, labels, name=name, version=version, out_dir=root, epochs=1,
                        embed_dim=8, hidden=8, progress=False, command=f"{root.name}")
    series = synthetic_series(3, 300, seed=4)
    train_forecast(series, name="fc", version="1", out_dir=second, epochs=1, steps_per_epoch=2,
                   batch_size=8, window=168, hidden=8, layers=1, progress=False)
    return first, second


def test_registry_resolve(registry_dirs):
    first, second = registry_dirs
    reg = Registry([first, second])
    assert sorted(c.ref for c in reg.cards()) == ["fc@1", "sent@10", "sent@2", "sentiment-bilstm@99"]
    assert reg.resolve("sentiment", "sent").version == "10"  # numeric, not string, order
    assert reg.resolve("sentiment", "sent@2").training["command"] == first.name  # first dir wins
    assert reg.resolve("sentiment").ref == "sentiment-bilstm@99"  # the default is the latest version
    assert reg.resolve("forecast", "fc@1").kind == "forecast"


@pytest.mark.parametrize("kind, ref, fragment", [
    ("sentiment", "nope", "available sentiment models: sent@10, sent@2, sentiment-bilstm@99"),
    ("sentiment", "sent@3", "no sentiment model 'sent@3'"),
    ("sentiment", "fc", "'fc' is a forecast model"),
    ("forecast", None, "default m4-hourly-lstm@"),
    ("vision", None, "unknown model kind"),
])
def test_registry_errors(registry_dirs, kind, ref, fragment):
    with pytest.raises(ModelNotFound, match=fragment.replace("(", r"\(")) as err:
        Registry(list(registry_dirs)).resolve(kind, ref)
    assert isinstance(err.value, ValueError)


def test_registry_load_is_cached_and_thread_safe(registry_dirs):
    reg = Registry(list(registry_dirs))
    got = []
    threads = [threading.Thread(target=lambda: got.append(reg.load("sentiment", "sent")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(m is got[0] for m in got)
    assert reg.load("forecast", "fc") is not got[0]


def test_default_registry_searches_env_dirs_first(registry_dirs, monkeypatch):
    monkeypatch.setenv("FLIGHT_LSTM_MODELS", str(registry_dirs[1]))
    assert default_registry().resolve("sentiment").path.startswith(str(registry_dirs[1]))
    assert default_registry().resolve("forecast").name == "m4-hourly-lstm"  # packaged fallback
    monkeypatch.delenv("FLIGHT_LSTM_MODELS")
    assert "weights" in default_registry().resolve("sentiment").path


def test_the_operators_load_through_the_one_registry(registry_dirs, monkeypatch):
    monkeypatch.setenv("FLIGHT_LSTM_MODELS", str(registry_dirs[1]))
    model = load_model("sentiment", None)
    assert model is default_registry().load("sentiment") and model.card.ref == "sentiment-bilstm@99"


def frequency_registry(root: Path, listing: dict[str, list]) -> Registry:
    """A registry over cards only (resolving loads nothing), each listing the given frequencies."""
    for ref in listing:
        name, version = ref.split("@")
        (root / name / version).mkdir(parents=True)
        ModelCard(name, version, "forecast", "2026-01-01T00:00:00+00:00").write(root / name / version)
    reg = Registry([root])
    cards = reg.cards()
    for card in cards:  # the optional card field `frequencies`
        card.frequencies = listing[card.ref]
    reg.cards = lambda: cards
    return reg


def test_a_frequency_resolves_to_the_model_whose_card_lists_it(tmp_path):
    reg = frequency_registry(tmp_path, {"m4-hourly-lstm@1": [], "tourism@1": ["monthly", 4],
                                        "tourism@2": ["monthly", "quarterly"], "weekly@1": []})
    assert reg.resolve("forecast", "monthly").ref == "tourism@2"  # the latest version listing it
    assert reg.resolve("forecast", " Quarterly ").ref == "tourism@2"
    assert reg.resolve("forecast", "12").ref == "tourism@2"  # a seasonal period: monthly's
    assert reg.resolve("forecast", "daily").ref == "m4-hourly-lstm@1"  # none lists it: the default
    assert reg.resolve("forecast", "168").ref == "m4-hourly-lstm@1"
    assert reg.resolve("forecast", "weekly").ref == "weekly@1"  # a model of that name comes first
    assert reg.resolve("forecast", "tourism@1").ref == "tourism@1"


@pytest.mark.parametrize("kind, ref, fragment", [
    ("forecast", "monthly@1", "no forecast model 'monthly@1'"),  # a version names a model
    ("sentiment", "monthly", "no sentiment model 'monthly'"),  # only forecasts have frequencies
    ("forecast", "fortnightly", "no forecast model 'fortnightly'"),
])
def test_what_is_not_a_frequency_reference(tmp_path, kind, ref, fragment):
    reg = frequency_registry(tmp_path, {"m4-hourly-lstm@1": ["hourly"]})
    with pytest.raises(ModelNotFound, match=fragment):
        reg.resolve(kind, ref)


def test_a_frequency_resolves_to_its_shipped_model():
    assert default_registry().resolve("forecast", "monthly").ref == "tourism-monthly-lstm@2"


# -- forecast training ----------------------------------------------------------------------------


def test_forecast_training_learns_and_round_trips(tmp_path):
    series = synthetic_series(24, 400, seed=5)
    model, info = fit_forecast(series, epochs=4, steps_per_epoch=15, batch_size=64, window=168,
                               hidden=32, layers=1, lr=3e-3, trunc_p=0.0, gap_p=0.0,
                               progress=False)
    history = info["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert info["best_val"] < history[0]["val"]
    q = model.abs_resid_q.numpy()
    assert np.all(np.diff(q, axis=0) >= 0) and np.all(q > 0)  # quantiles rise with the level
    card = train_forecast(series, name="fc", version="3", out_dir=tmp_path, epochs=1,
                          steps_per_epoch=3, batch_size=16, window=168, hidden=8, layers=1,
                          progress=False)
    saved = ForecastModel.load(card.path)
    live = Registry([tmp_path]).load("forecast", "fc@3")
    arr = to_arrow([s[:300] for s in series])
    a, b = saved.predict(arr, 60, 0.9), live.predict(arr, 60, 0.9)
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.hi, b.hi)


def test_generic_series_widen_the_interval_calibration_but_not_the_epoch_choice():
    """Calibration windows of the generic series calibrate the intervals with the data's own;
    the epoch is chosen on the data's own windows alone."""
    from flight_lstm.models.data import generic_series
    from flight_lstm.models.series import TrainingWindows

    series = synthetic_series(12, 300, seed=6)
    small = dict(epochs=2, steps_per_epoch=3, batch_size=16, window=48, tail=24, hidden=8, layers=1, progress=False)
    model, info = fit_forecast(series, seed=2, synthetic=5, **small)
    assert info["calibration_windows"] == 2 * (12 + 5)
    windows = TrainingWindows(series + generic_series(5, 300, 24, 3), 48, 48, 48, 2)
    own = windows.calibration(12)
    assert len(own[2]) == 2 * 12 and np.array_equal(own[0], windows.calibration()[0][windows.calib_rows < 12])
    calibrated = model.resid_q.clone()
    model.calibrate_intervals(*windows.calibration()[:3])
    assert torch.equal(model.resid_q, calibrated)
    model.calibrate_intervals(*own[:3])
    assert not torch.equal(model.resid_q, calibrated)


def test_synthetic_temperatures_wander_alike_at_their_ends_and_in_their_middle():
    """The validation set's weather is detrended by its weekly mean over the days there are: an edge
    padded with zeros made the last half week drift, and intervals looked worse than they were."""
    from flight_lstm.models.data import synthetic_series as validation_series

    series, kinds = validation_series("hourly", 500)
    temperatures = [x for x, kind in zip(series, kinds) if kind == "temperature"]

    def change(x, a, b):  # mean absolute change over two days, from a to b
        return np.abs(x[a:b] - x[a - 48:b - 48]).mean()

    ratios = [change(x, len(x) - 48, len(x)) / change(x, len(x) // 3, 2 * len(x) // 3) for x in temperatures]
    assert 0.85 < np.median(ratios) < 1.15


def test_a_seed_ensemble_averages_its_members_shrunk_toward_naive(tmp_path):
    series = synthetic_series(24, 300, seed=5)
    small = dict(epochs=1, steps_per_epoch=3, batch_size=16, window=48, tail=24, hidden=8, layers=1,
                 progress=False)
    one = [fit_forecast(series, seed=s, **small)[0] for s in (3, 4)]
    model, info = fit_forecast(series, seed=3, members=2, shrink=0.5, **small)
    assert info["hparams"]["members"] == 2 and len(info["members"]) == 2
    arr, naive = to_arrow([s[:200] for s in series]), np.array([s[176:200] for s in series])
    mean = np.mean([m.predict(arr, 24).mean for m in one], axis=0)
    assert np.allclose(model.predict(arr, 24).mean, naive + 0.5 * (mean - naive), rtol=1e-4, atol=1e-3)
    card = train_forecast(series, name="fc", version="1", out_dir=tmp_path, seed=3, members=2, shrink=0.5,
                          **small)
    again = ForecastModel.load(card.path)
    assert again.config["members"] == 2 and np.array_equal(again.predict(arr, 24).mean, model.predict(arr, 24).mean)


def test_fill_gaps_interpolates_within_rows_only():
    values = np.array([np.nan, 1.0, np.nan, 3.0, np.nan, np.nan, 7.0, np.nan, np.nan])
    filled, observed, valid = fill_gaps(values, np.array([5, 0, 2, 2]))
    assert np.allclose(filled[:5], [1, 1, 2, 3, 3])
    assert np.allclose(filled[5:7], [7, 7])
    assert np.isnan(filled[7:]).all() and list(valid) == [True, False, True, False]
    assert observed.sum() == 3


def test_naive2_deseasonalizes_seasonal_series_only():
    t = np.arange(24 * 20)
    seasonal = 100 * (1 + 0.5 * np.sin(2 * np.pi * t / 24))
    assert seasonality_test(seasonal, 24)
    assert np.allclose(naive2(seasonal, 48, 24), seasonal[-24:][np.arange(48) % 24], rtol=0.02)
    flat = np.random.default_rng(0).normal(100, 1, 24 * 20)
    assert not seasonality_test(flat, 24)
    assert np.all(naive2(flat, 5, 24) == flat[-1])


# -- shipped forecast model robustness ------------------------------------------------------------


@pytest.fixture(scope="module")
def forecaster():
    model = default_registry().load("forecast")
    assert (model.card.name, model.card.version) == ("m4-hourly-lstm", "5")
    return model


def hourly(length, level=100.0, amp=20.0, seed=0):
    t = np.arange(length)
    noise = np.random.default_rng(seed).normal(0, 0.05 * amp, length)
    return level + amp * np.sin(2 * np.pi * t / 24) + noise


def test_shipped_forecast_metrics(forecaster):
    m = forecaster.card.metrics
    assert m["model"]["owa"] < m["seasonal_naive"]["owa"] < 1.0
    assert 0.85 <= m["model"]["coverage_95"] <= 1.0


@pytest.mark.parametrize("horizon", [1, 48, 100])
def test_forecast_edge_series(forecaster, horizon):
    gaps = hourly(500)
    gaps[[0, 1, 100, 101, 102, 300, 499]] = np.nan
    gaps[200] = np.inf  # non-finite values count as missing
    rows = [[], [5.0], [1.0, 2.0, 3.0], [np.nan] * 10, list(gaps), [42.5] * 200,
            list(hourly(400, 0.05, 0.01)), list(hourly(400, 1e6, 2e5)),
            list(np.arange(300) * 3.0 + hourly(300)), list(hourly(300) - 1000.0), None,
            list(hourly(30)), [1.0, None, np.nan, 4.0] * 10]
    arr = pa.array(rows, pa.list_(pa.float64()))
    r = forecaster.predict(arr, horizon=horizon, level=0.9)
    assert r.mean.shape == r.lo.shape == r.hi.shape == (13, horizon)
    assert list(r.valid) == [False, True, True, False] + [True] * 6 + [False, True, True]
    assert np.all(r.mean[~r.valid] == 0)
    for a in (r.mean, r.lo, r.hi):
        assert a.dtype == np.float64 and np.isfinite(a).all()
    assert np.all(r.lo <= r.mean) and np.all(r.mean <= r.hi)
    assert np.allclose(r.mean[1], 5.0, rtol=1e-4) and np.allclose(r.mean[5], 42.5, rtol=1e-4)
    assert np.all(r.mean[9] < -800) and np.all(np.abs(r.mean[6] - 0.05) < 0.05)
    assert np.all(np.abs(r.mean[7] / 1e6 - 1) < 0.6)


def test_forecast_is_scale_and_shift_equivariant(forecaster):
    base = [hourly(400, seed=s) for s in range(4)]
    f = forecaster.predict(to_arrow(base), 48, 0.95)
    for c in (1e-3, 1e6):
        g = forecaster.predict(to_arrow([c * s for s in base]), 48, 0.95)
        assert np.allclose(g.mean, c * f.mean, rtol=1e-4) and np.allclose(g.hi, c * f.hi, rtol=1e-4)
    h = forecaster.predict(to_arrow([s - 1e4 for s in base]), 48)
    assert np.allclose(h.mean, f.mean - 1e4, atol=0.5) and h.lo is None and h.hi is None


def test_forecast_trend_continues(forecaster):
    t = np.arange(600, dtype=float)
    r = forecaster.predict(to_arrow([50 + 2 * t + hourly(600, 0, 5)]), 48)
    assert np.isfinite(r.mean).all()
    # Continues from the recent level (~1225) rather than falling back to the window mean (~913).
    assert r.mean[0].mean() > 1150


def test_forecast_accepts_other_types_and_long_horizons(forecaster):
    ints = [list(np.round(hourly(200)).astype(int)), [3, 3, 3]]
    as_int = forecaster.predict(pa.array(ints, pa.list_(pa.int64())), 24)
    as_f32 = forecaster.predict(pa.array(ints, pa.list_(pa.float32())), 24)
    as_large = forecaster.predict(pa.array(ints, pa.large_list(pa.float64())), 24)
    assert np.array_equal(as_int.mean, as_f32.mean) and np.array_equal(as_int.mean, as_large.mean)
    long = forecaster.predict(to_arrow([hourly(300)]), MAX_HORIZON, 0.8)
    short = forecaster.predict(to_arrow([hourly(300)]), 48, 0.8)
    assert long.mean.shape == (1, MAX_HORIZON) and np.isfinite(long.hi).all()
    assert np.array_equal(long.mean[:, :48], short.mean)
    assert np.all(long.hi[0, 48:96] - long.lo[0, 48:96] > short.hi[0] - short.lo[0])
    wider = forecaster.predict(to_arrow([hourly(300)]), 48, 0.99)
    assert np.all(wider.hi - wider.lo > short.hi - short.lo)


@pytest.mark.parametrize("horizon", [0, -1, MAX_HORIZON + 1, 2.5, True])
def test_forecast_invalid_horizon(forecaster, horizon):
    with pytest.raises(ValueError, match="horizon"):
        forecaster.predict(to_arrow([hourly(100)]), horizon)


@pytest.mark.parametrize("level", [0, 1, 95, -0.5])
def test_forecast_invalid_level(forecaster, level):
    with pytest.raises(ValueError, match="level"):
        forecaster.predict(to_arrow([hourly(100)]), 24, level)
