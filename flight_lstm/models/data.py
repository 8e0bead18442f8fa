"""Readers of the data sets that train and evaluate the shipped models (M4 hourly, SST-2 and the
teacher's soft labels), kept apart from the networks so a new model or benchmark reuses them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .text import tokenize

HOLDOUT = 0.1  # share of SST-2 training sentences held out, scored each epoch
SOFT_LABELS = Path.home() / ".cache" / "flight-lstm" / "sst2-soft-labels.parquet"


def dataset_dir(data: str | Path, name: str) -> Path:
    """A dataset's folder, given it or the shared data root holding it (e.g. `sst2`, `m4_hourly`)."""
    data = Path(data)
    return data / name if (data / name).is_dir() else data


def load_m4_hourly(csv_path: str | Path) -> dict[str, np.ndarray]:
    """M4 hourly training series by id (H1..H414), trailing padding removed."""
    table = pacsv.read_csv(csv_path)
    ids = table.column(0).to_pylist()
    values = np.column_stack([
        pc.cast(table.column(j), pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        for j in range(1, table.num_columns)])
    lengths = (~np.isnan(values)).sum(axis=1)
    return {sid: values[i, :lengths[i]].copy() for i, sid in enumerate(ids)}


def _read_tsv(path: Path) -> tuple[pa.Array, np.ndarray]:
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
    return {split: _read_tsv(data_dir / file) for split, file in names.items()}


def holdout_split(data: dict, fraction: float = HOLDOUT, seed: int = 0) -> dict:
    """Phrases + sentences for training, and a held-out slice of the training sentences.

    Every phrase is a span of some training sentence, so the phrases that are spans of a held-out
    sentence leave the training side too; the slice then scores like unseen text (the README
    card says how it and dev chose the shipped model).
    """
    sentences, labels = data["train"]
    rng = np.random.default_rng(seed)
    held = np.sort(rng.permutation(len(labels))[:int(len(labels) * fraction)])
    spans = set()
    for tokens in tokenize(sentences.take(pa.array(held))).to_pylist():
        spans.update(" ".join(tokens[i:j]) for i in range(len(tokens))
                     for j in range(i + 1, len(tokens) + 1))
    spans = pa.array(sorted(spans), pa.string())
    phrases, phrase_labels = data["phrases"]
    joined = pc.binary_join(tokenize(phrases), " ")
    keep_phrase = ~pc.fill_null(pc.is_in(joined, value_set=spans), False).to_numpy(
        zero_copy_only=False)
    keep_sentence = np.ones(len(labels), bool)
    keep_sentence[held] = False
    kept = (sentences.filter(pa.array(keep_sentence)), labels[keep_sentence])
    return {
        "train": (pa.concat_arrays([phrases.filter(pa.array(keep_phrase)), kept[0]]),
                  np.concatenate([phrase_labels[keep_phrase], kept[1]])),
        "sentences": kept,
        "held_out": (sentences.take(pa.array(held)), labels[held]),
    }


def read_soft_labels(path: str | Path) -> tuple[pa.Array, np.ndarray, np.ndarray, dict]:
    """Texts, labels (-1 where only the teacher labelled), teacher logits and the file's notes
    (written by teacher.soft_labels)."""
    table = pq.read_table(path)
    labels = pc.fill_null(table["label"], -1).to_numpy().astype(np.int64)
    meta = json.loads(table.schema.metadata[b"flight_lstm"])
    return (table["text"].combine_chunks(), labels,
            table["teacher_logit"].to_numpy().astype(np.float32), meta)
