"""Readers of the data sets that train and evaluate the shipped models (M4 Hourly and Weekly, NN5,
tourism, SST-2/SST-5 and the review sets), and the synthetic series the forecasters are also
validated on, kept apart from the networks so a new model or benchmark reuses them."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from .text import tokenize

HOLDOUT = 0.1  # share of SST-5 training sentences held out, scored each epoch
SOFT_LABELS = Path.home() / ".cache" / "flight-lstm" / "sentiment-soft-labels.parquet"
REVIEW_TEACHERS = SOFT_LABELS.parent / "sentiment-review-teachers"  # teacher.review_teacher writes here


def dataset_dir(data: str | Path, name: str) -> Path:
    """A dataset's folder, given it or the shared data root holding it (e.g. `sst2`, `m4_hourly`)."""
    data = Path(data)
    return data / name if (data / name).is_dir() else data


def load_m4(csv_path: str | Path) -> dict[str, np.ndarray]:
    """M4 training series by id (H1..H414, W1..W359, ...), trailing padding removed."""
    table = pacsv.read_csv(csv_path)
    ids = table.column(0).to_pylist()
    values = np.column_stack([
        pc.cast(table.column(j), pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        for j in range(1, table.num_columns)])
    lengths = (~np.isnan(values)).sum(axis=1)
    return {sid: values[i, :lengths[i]].copy() for i, sid in enumerate(ids)}


load_m4_hourly = load_m4


def load_nn5(csv_path: str | Path, weekdays_only: bool = False) -> dict[str, np.ndarray]:
    """NN5 daily series by id (N101..N211), NaN where a day is missing; with `weekdays_only`,
    Monday to Friday only (a business-daily series of period 5)."""
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header, body = rows[0], [r for r in rows[1:] if r]
    keep = [not weekdays_only or date.fromisoformat(r[0]).weekday() < 5 for r in body]
    values = np.array([[float(v) if v.strip() else np.nan for v in r[1:]]
                       for r, k in zip(body, keep) if k])
    return {sid.strip(): values[:, j].copy() for j, sid in enumerate(header[1:]) if sid.strip()}


def load_tourism(data_dir: str | Path, freq: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tourism competition series of `freq` ('monthly', 'quarterly' or 'yearly'): the histories
    (`*_in.csv`) and the published out-of-sample values that follow them (`*_oos.csv`)."""
    data_dir = dataset_dir(data_dir, "tourism")
    header_rows = 2 if freq == "yearly" else 3  # length, start year[, start month or quarter]

    def read(name: str) -> dict[str, np.ndarray]:
        with open(data_dir / name, newline="") as f:
            rows = list(csv.reader(f))
        ids, lengths, body = rows[0], rows[1], rows[1 + header_rows:]
        out = {}
        for j, sid in enumerate(ids):  # the header's length: a few columns have stray cells below
            column = [r[j] for r in body[:int(lengths[j])]]
            out[sid.strip()] = np.array(column, dtype=np.float64)
        return out

    return read(f"{freq}_in.csv"), read(f"{freq}_oos.csv")


def read_labelled(path: Path) -> tuple[pa.Array, np.ndarray]:
    """A `sentence<TAB>label` file (SST, reviews) as (texts, integer labels)."""
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={"sentence": pa.string(), "label": pa.int64()}),
    )
    return table["sentence"].combine_chunks(), table["label"].to_numpy()


def load_sst2(data_dir: str | Path) -> dict[str, tuple[pa.Array, np.ndarray]]:
    """SST-2 splits as (texts, labels): 'train', 'dev' and 'phrases' (train_phrases.tsv)."""
    data_dir = dataset_dir(data_dir, "sst2")
    names = {"train": "train.tsv", "dev": "dev.tsv", "phrases": "train_phrases.tsv"}
    return {split: read_labelled(data_dir / file) for split, file in names.items()}


CLASSES = ("negative", "neutral", "positive")  # a sentiment model's three classes, in logit order
NEGATIVE, NEUTRAL, POSITIVE = 0, 1, 2
SST5_TO_3 = np.array([NEGATIVE, NEGATIVE, NEUTRAL, POSITIVE, POSITIVE])  # (very) negative, neutral, (very) positive
SENTIMENT_FILES = ("sst5/train.tsv", "sst2/train_phrases.tsv", "reviews/custrev.tsv", "reviews/mpqa.tsv")


def _not_spans_of(phrases: pa.Array, sentences: pa.Array) -> np.ndarray:
    """Which phrases are not a span of any of `sentences` (compared as tokens)."""
    spans = set()
    for tokens in tokenize(sentences).to_pylist():
        spans.update(" ".join(tokens[i:j]) for i in range(len(tokens)) for j in range(i + 1, len(tokens) + 1))
    joined = pc.binary_join(tokenize(phrases), " ")
    inside = pc.is_in(joined, value_set=pa.array(sorted(spans), pa.string()))
    return ~pc.fill_null(inside, False).to_numpy(zero_copy_only=False)


def sentiment_split(data: str | Path, fraction: float = HOLDOUT, seed: int = 0) -> dict:
    """The three-class model's training rows and the held-out slice that chooses its recipe.

    Training rows (a table: text, three, binary, source, row): the SST-5 training sentences with
    three classes (`three`: 0 negative, 1 neutral, 2 positive), and with two (`binary`: 0/1) the
    SST-2 training phrases, the customer-review sentences and the MPQA phrases; the other label
    is null, `row` is the line in its source file.  A held-out slice (`fraction`) of the SST-5
    training sentences stays out with every SST-2 phrase that is a span of one of them, since
    each phrase is a span of some training sentence and would make the slice score like seen
    text.  SST-5 dev and SST-2 dev are never read here: they report, once.
    """
    data = Path(data)
    sentences, five = read_labelled(data / "sst5" / "train.tsv")
    held = np.sort(np.random.default_rng(seed).permutation(len(five))[:int(len(five) * fraction)])
    kept = np.setdiff1d(np.arange(len(five)), held)
    parts = [("sst5", sentences.take(pa.array(kept)), SST5_TO_3[five[kept]], None, kept)]
    phrases, labels = read_labelled(data / "sst2" / "train_phrases.tsv")
    keep = np.flatnonzero(_not_spans_of(phrases, sentences.take(pa.array(held))))
    parts.append(("sst2-phrases", phrases.take(pa.array(keep)), None, labels[keep], keep))
    for name in ("custrev", "mpqa"):
        texts, labels = read_labelled(data / "reviews" / f"{name}.tsv")
        parts.append((name, texts, None, labels, np.arange(len(labels))))

    def column(values, n):
        return pa.nulls(n, pa.int64()) if values is None else pa.array(values, pa.int64())

    train = pa.concat_tables([pa.table({
        "text": texts, "three": column(three, len(rows)), "binary": column(binary, len(rows)),
        "source": pa.array([name] * len(rows), pa.string()),
        "row": pa.array(rows, pa.int64())}) for name, texts, three, binary, rows in parts])
    return {"train": train, "held_out": (sentences.take(pa.array(held)), SST5_TO_3[five[held]])}


REVIEW_FOLDS = 5  # the customer reviews' cross-validation folds (and the review teachers, one per fold)


def custrev_folds(n: int, k: int = REVIEW_FOLDS, seed: int = 0) -> np.ndarray:
    """The fold (0..k-1) of each customer-review sentence for k-fold cross-validation."""
    return np.random.default_rng(seed).permutation(n) % k


def review_folds(table: pa.Table, k: int = REVIEW_FOLDS, seed: int = 0) -> np.ndarray:
    """Per row of a `sentiment_split` or soft-label table, the cross-validation fold of its
    customer review (augmented copies share their original's, by `row`); -1 for other sources."""
    is_review = pc.equal(table["source"], "custrev").to_numpy(zero_copy_only=False)
    row = table["row"].to_numpy()
    original = is_review & (~table["augmented"].to_numpy(zero_copy_only=False)
                            if "augmented" in table.column_names else True)
    review_rows = np.sort(row[original])
    fold_of = np.full(int(row.max(initial=0)) + 1, -1)  # by row in custrev.tsv
    fold_of[review_rows] = custrev_folds(len(review_rows), k, seed)
    return np.where(is_review, fold_of[np.where(is_review, row, 0)], -1)


# -- synthetic series, unlike the training data --------------------------------------------------

SYNTHETIC_KINDS = ("temperature", "load", "counts", "trend", "level_shift")


def synthetic_series(freq: str, n: int = 200, seed: int = 2026) -> tuple[list[np.ndarray], list[str]]:
    """`n` hourly (6 weeks) or daily (2 years and 2 months) series of the SYNTHETIC_KINDS in turn:
    temperatures (weather wandering around the cycle, below zero too), electric loads (daily and
    weekly profiles, multiplicative), counts with many zeros (Poisson at low rates), trends
    (growing or shrinking, with noise) and level shifts (a step of 30-60% late in the history).
    Returns the series and their kinds."""
    if freq not in ("hourly", "daily"):
        raise ValueError(f"synthetic series are hourly or daily, not {freq!r}")
    rng = np.random.default_rng(seed)
    hourly = freq == "hourly"
    length, per_day = (24 * 42, 24) if hourly else (790, 1)
    t = np.arange(length)
    day = t / per_day
    # Weather wanders about its weekly moving mean, taken over the days there are (at the ends too).
    week = np.ones(per_day * 7)
    days_in_week = np.convolve(np.ones(length), week, "same")
    out, kinds = [], []
    for i in range(n):
        kind = SYNTHETIC_KINDS[i % len(SYNTHETIC_KINDS)]
        phase = rng.uniform(0, 2 * np.pi)
        daily = np.sin(2 * np.pi * day + phase) if hourly else np.zeros(length)
        weekly = np.isin(np.floor(day + rng.integers(7)) % 7, (5, 6))  # the weekend
        annual = np.sin(2 * np.pi * day / 365.25 + phase)
        weather = np.cumsum(rng.normal(0, 1, length))
        weather = weather - np.convolve(weather, week, "same") / days_in_week
        if kind == "temperature":
            x = (rng.uniform(-5, 20) + rng.uniform(3, 8) * daily + rng.uniform(5, 12) * annual
                 + rng.uniform(0.3, 1.0) * weather / np.sqrt(per_day))
        elif kind == "load":
            profile = 1 + 0.25 * daily + 0.1 * np.sin(4 * np.pi * day + phase) - 0.2 * weekly
            x = rng.uniform(50, 5000) * profile * (1 + 0.05 * annual) * rng.lognormal(0, 0.03, length)
        elif kind == "counts":
            rate = rng.uniform(0.2, 4) * np.exp(0.8 * daily + 0.4 * ~weekly)
            x = rng.poisson(rate).astype(np.float64)
        elif kind == "trend":
            growth = rng.uniform(-0.4, 1.0) * t / length
            x = rng.uniform(100, 1000) * (1 + growth) * (1 + 0.2 * daily + 0.15 * weekly)
            x = x + rng.normal(0, 0.03 * x.mean(), length)
        else:
            at = int(length * rng.uniform(0.6, 0.9))
            step = np.where(t >= at, rng.choice([-1, 1]) * rng.uniform(0.3, 0.6), 0.0)
            x = rng.uniform(20, 500) * (1 + step) * (1 + 0.3 * daily + 0.2 * weekly)
            x = x * rng.lognormal(0, 0.05, length)
        out.append(x)
        kinds.append(kind)
    return out, kinds


def generic_series(n: int, length: int, season: int, seed: int = 0) -> list[np.ndarray]:
    """Random structural series that widen a forecaster's training beyond its data set (never
    scored): a level; a trend, sometimes bending; a cycle of period `season` of 1-3 harmonics
    and sometimes a longer one; AR(1) noise from white to nearly a random walk; additive or
    multiplicative; sometimes a level shift, sometimes counts (Poisson). Unlike
    `synthetic_series`, which validates, it draws no temperatures, loads or other named kinds."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :]
    u = lambda lo, hi: rng.uniform(lo, hi, (n, 1))  # noqa: E731 - one draw per series
    trend = rng.normal(0, 0.4, (n, 1)) * t / length * (rng.random((n, 1)) < 0.7)
    bend = rng.integers(length // 3, length, (n, 1))
    trend += rng.normal(0, 0.4, (n, 1)) * np.maximum(t - bend, 0) / length * (rng.random((n, 1)) < 0.3)
    cycle = np.zeros((n, length))
    if season > 1:
        for k in (1, 2, 3):
            on = rng.random((n, 1)) < (0.85 if k == 1 else 0.5)
            cycle += on * rng.normal(0, 0.25 / k, (n, 1)) * np.sin(2 * np.pi * k * t / season + u(0, 2 * np.pi))
    longer = season * rng.choice([4.35, 7.0, 12.0, 52.18], (n, 1)) if season > 1 else u(4, 12)
    cycle += (rng.random((n, 1)) < 0.4) * u(0, 0.3) * np.sin(2 * np.pi * t / longer + u(0, 2 * np.pi))
    phi, sigma = u(0, 0.98), u(0.005, 0.2)
    shocks = rng.normal(0, 1, (n, length)) * sigma * np.sqrt(1 - phi**2)
    noise = np.zeros((n, length))
    noise[:, 0] = shocks[:, 0] / np.sqrt(1 - phi[:, 0] ** 2)
    for i in range(1, length):
        noise[:, i] = phi[:, 0] * noise[:, i - 1] + shocks[:, i]
    shift = np.where(t >= rng.integers(length // 2, length, (n, 1)), u(-0.5, 0.5), 0.0)
    shift *= rng.random((n, 1)) < 0.2
    multiplicative = rng.random((n, 1)) < 0.6
    x = np.where(multiplicative, (1 + trend) * (1 + cycle) * np.exp(noise) * (1 + shift),
                 1 + trend + cycle + noise + shift)
    counts = rng.random(n) < 0.15
    rate = np.clip(x[counts], 0, None) * rng.uniform(0.3, 8, (counts.sum(), 1))
    x[counts] = rng.poisson(rate)
    level = np.where(counts[:, None], 1.0, rng.lognormal(3, 2, (n, 1)) * rng.choice([1, 1, 1, -1], (n, 1)))
    return list(x * level + np.where(counts[:, None], 0.0, rng.normal(0, 1, (n, 1)) * level))


# -- SKAB (anomaly detection) --------------------------------------------------------------------

SKAB_FOLDERS = ("anomaly-free", "valve1", "valve2", "other")


def load_skab(data: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """SKAB experiments by name ('anomaly-free', 'valve1/0', ..., 'other/14') as (values
    (points, 8) float64 in the sensors' column order, anomaly labels (points,) bool; all False
    for the anomaly-free run), rows in time order."""
    root = dataset_dir(data, "skab")
    out = {}
    for folder in SKAB_FOLDERS:
        files = sorted((root / folder).glob("*.csv"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
        for path in files:
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=";"))
            table = table.sort_by("datetime")
            sensors = [c for c in table.column_names if c not in ("datetime", "anomaly", "changepoint")]
            values = np.column_stack([pc.cast(table[c], pa.float64()).to_numpy(zero_copy_only=False)
                                      for c in sensors])
            labels = (table["anomaly"].to_numpy(zero_copy_only=False) > 0
                      if "anomaly" in table.column_names else np.zeros(len(values), bool))
            out[folder if folder == "anomaly-free" else f"{folder}/{path.stem}"] = (values, labels)
    return out
