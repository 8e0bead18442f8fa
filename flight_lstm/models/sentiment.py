"""BiLSTM sentence sentiment: embedding -> BiLSTM -> masked max+mean pooling -> one logit.

Scores are 2*sigmoid(logit)-1 in [-1, 1].  Inference sorts rows by token count and runs buckets of
similar length as packed sequences, so padding costs little and long texts do not slow short ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import BaseModel, dataset_dir, now_iso, seed_everything, training_record
from .checks import between_batches
from .registry import ModelCard
from .text import PAD, Encoded, build_vocab, encode, tokenize

BATCH_ROWS = 512  # inference rows per bucket
BATCH_TOKENS = 65_536  # inference cap on rows x longest row per bucket (bounds memory)
HOLDOUT = 0.1  # share of training sentences held out, scored each epoch
SOFT_LABELS = Path.home() / ".cache" / "flight-lstm" / "sst2-soft-labels.parquet"


class SentimentModel(BaseModel):
    kind = "sentiment"

    def __init__(self, vocab: list[str], embed_dim: int = 128, hidden: int = 128,
                 dropout: float = 0.5):
        super().__init__(vocab=list(vocab), embed_dim=embed_dim, hidden=hidden, dropout=dropout)
        self.vocab = pa.array(vocab, pa.string())
        self.embed = nn.Embedding(len(vocab) + 2, embed_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(4 * hidden, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch,) for padded ids (batch, time) with true lengths (all >= 1)."""
        x = self.drop(self.embed(ids))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                   total_length=ids.shape[1])
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        h_max = h.masked_fill(~mask, float("-inf")).amax(dim=1)
        h_mean = h.sum(dim=1) / lengths[:, None].to(h.dtype)
        return self.out(self.drop(torch.cat([h_max, h_mean], dim=1))).squeeze(-1)

    def training_loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """BCE on the labels; with teacher logits (distillation, Tang et al. 2019), MSE to those
        plus BCE on the rows that have a label (NaN marks none), so the teacher's errors on
        labelled text are outvoted."""
        ids, lengths, labels, *teacher = batch
        logits = self(ids, lengths)
        if not teacher:
            return nn.functional.binary_cross_entropy_with_logits(logits, labels)
        labelled = ~labels.isnan()
        loss = nn.functional.mse_loss(logits, teacher[0])
        if labelled.any():
            loss = loss + nn.functional.binary_cross_entropy_with_logits(logits[labelled],
                                                                         labels[labelled])
        return loss

    def encode(self, texts: pa.Array | pa.ChunkedArray) -> Encoded:
        return encode(texts, self.vocab)

    def logits(self, enc: Encoded) -> np.ndarray:
        """Logits for encoded rows; NaN for rows without tokens."""
        out = np.full(len(enc), np.nan)
        rows = np.flatnonzero(enc.lengths > 0)
        rows = rows[np.argsort(enc.lengths[rows], kind="stable")]
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                start = 0
                while start < len(rows):
                    between_batches()  # a caller's cancel or time limit may stop the call here
                    stop = min(start + BATCH_ROWS, len(rows))
                    longest = int(enc.lengths[rows[stop - 1]])
                    stop = min(stop, start + max(1, BATCH_TOKENS // longest))
                    batch = rows[start:stop]
                    ids = torch.from_numpy(enc.pad(batch))
                    lengths = torch.from_numpy(enc.lengths[batch])
                    out[batch] = self(ids, lengths).double().numpy()
                    start = stop
        finally:
            self.train(was_training)
        return out

    def score(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Sentiment in [-1, 1] per text (float64); NaN for null, empty or token-less texts."""
        logit = self.logits(self.encode(texts))
        return 2.0 / (1.0 + np.exp(-logit)) - 1.0


# -- data --------------------------------------------------------------------------------------


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


_DETOKENIZE = (
    (r" n't\b", "n't"), (r"\bca n't", "can't"), (r"\bwo n't", "won't"),
    (r" '(s|re|ve|ll|d|m)\b", r"'\1"), (r"-lrb- ", "("), (r" -rrb-", ")"),
    (r"\\(.)", r"\1"), (r"`` ", '"'), (r" ''", '"'), (r"` ", "'"),
    (r" ([.,!?;:%])", r"\1"), (r"\bcan not\b", "cannot"),
)


def detokenize(texts: pa.Array) -> pa.Array:
    """A raw-looking copy of PTB-tokenized text ("is n't" -> "isn't", "-lrb- a -rrb-" -> "(a)")."""
    for pattern, replacement in _DETOKENIZE:
        texts = pc.replace_substring_regex(texts, pattern=pattern, replacement=replacement)
    return pc.utf8_capitalize(texts)


def evaluate_sentiment(model: SentimentModel, texts: pa.Array, labels: np.ndarray) -> dict:
    """Accuracy on the texts as given and on a detokenized, raw-looking copy of them."""
    labels = np.asarray(labels)
    acc = float(np.mean((model.score(texts) > 0) == (labels == 1)))
    raw = float(np.mean((model.score(detokenize(texts)) > 0) == (labels == 1)))
    return {"accuracy": round(acc, 4), "raw_text_accuracy": round(raw, 4), "n": int(len(labels))}


# -- training ----------------------------------------------------------------------------------


def _batches(enc: Encoded, labels: np.ndarray, batch_size: int,
             teacher: np.ndarray | None = None):
    """Epoch iterator: shuffled buckets of rows with similar length; labels < 0 become NaN."""
    keep = np.flatnonzero(enc.lengths > 0)
    labels = np.where(labels < 0, np.nan, labels).astype(np.float32)
    extra = () if teacher is None else (np.asarray(teacher, np.float32),)

    def epoch(rng: np.random.Generator):
        noisy = enc.lengths[keep] + rng.uniform(0, 2, len(keep))
        order = keep[np.argsort(noisy)]
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for k in rng.permutation(len(chunks)):
            rows = chunks[k]
            yield (torch.from_numpy(enc.pad(rows)), torch.from_numpy(enc.lengths[rows]),
                   *(torch.from_numpy(a[rows]) for a in (labels, *extra)))

    return epoch


def fit_sentiment(texts: pa.Array, labels: np.ndarray, *, seed: int = 0, epochs: int = 8,
                  dev: tuple[pa.Array, np.ndarray] | None = None, vocab_size: int = 14_000,
                  embed_dim: int = 128, hidden: int = 128, dropout: float = 0.5,
                  batch_size: int = 128, lr: float = 3e-3, patience: int = 3,
                  average_last: int = 0, teacher: np.ndarray | None = None,
                  progress: bool = True) -> tuple[SentimentModel, dict[str, Any]]:
    """Train a SentimentModel; select the epoch by accuracy on `dev` (or a 10% held-out split),
    or with `average_last` keep the mean weights of the last epochs (BaseModel.fit).

    With `teacher` (one logit per text) the model is distilled; labels of -1 then mark texts
    that only the teacher labelled, and the vocabulary comes from the labelled texts alone.
    """
    rng = seed_everything(seed)
    labels = np.asarray(labels, dtype=np.int64)
    if dev is None:
        perm = rng.permutation(len(labels))
        perm = perm[labels[perm] >= 0]
        cut = max(1, len(perm) // 10)
        dev = (texts.take(pa.array(perm[:cut])), labels[perm[:cut]])
        train = np.setdiff1d(np.arange(len(labels)), perm[:cut])
        texts, labels = texts.take(pa.array(train)), labels[train]
        teacher = None if teacher is None else np.asarray(teacher)[train]
    vocab = build_vocab(tokenize(texts.filter(pa.array(labels >= 0))), vocab_size)
    model = SentimentModel(vocab, embed_dim=embed_dim, hidden=hidden, dropout=dropout)
    enc, dev_enc = model.encode(texts), model.encode(dev[0])
    dev_pos = np.asarray(dev[1]) == 1

    def dev_error() -> float:
        return float(np.mean((model.logits(dev_enc) > 0) != dev_pos))

    info = model.fit(_batches(enc, labels, batch_size, teacher), dev_error, rng=rng,
                     epochs=epochs, lr=lr, patience=patience, average_last=average_last,
                     desc="sentiment", progress=progress)
    info.update(vocab_size=len(vocab), train_rows=len(labels), dev_rows=len(dev[1]),
                distilled=teacher is not None,
                hparams=dict(embed_dim=embed_dim, hidden=hidden, dropout=dropout,
                             batch_size=batch_size, lr=lr, patience=patience,
                             average_last=average_last))
    return model, info


def train_sentiment(texts: pa.Array, labels: np.ndarray, *, name: str, version: str,
                    out_dir: str | Path, seed: int = 0, epochs: int = 8,
                    dev: tuple[pa.Array, np.ndarray] | None = None, data_files=(),
                    command: str = "train_sentiment", **hparams: Any) -> ModelCard:
    """Train and save a sentiment model; the card's metrics hold the selection accuracy."""
    model, info = fit_sentiment(texts, labels, seed=seed, epochs=epochs, dev=dev, **hparams)
    card = ModelCard(name=name, version=str(version), kind="sentiment", created=now_iso(),
                     training=training_record(info, seed, epochs, data_files, command),
                     metrics={"selection_accuracy": round(1 - info["best_val"], 4)})
    return model.save(out_dir, card)


def read_soft_labels(path: str | Path) -> tuple[pa.Array, np.ndarray, np.ndarray, dict]:
    """Texts, labels (-1 where only the teacher labelled), teacher logits and the file's notes
    (written by teacher.soft_labels)."""
    table = pq.read_table(path)
    labels = pc.fill_null(table["label"], -1).to_numpy().astype(np.int64)
    meta = json.loads(table.schema.metadata[b"flight_lstm"])
    return (table["text"].combine_chunks(), labels,
            table["teacher_logit"].to_numpy().astype(np.float32), meta)


def train_shipped_sentiment(data_dir: str | Path, out_dir: str | Path,
                            soft_labels: str | Path | None = None, *, seed: int = 0,
                            epochs: int = 8, average_last: int = 4, version: str = "4",
                            command: str | None = None) -> ModelCard:
    """The shipped sst2-bilstm: distilled from the MiniLM teacher's logits on the training
    phrases, sentences and their augmented copies (soft_labels, default SOFT_LABELS; made by
    flight_lstm.models.teacher).  The served weights are the mean of the last `average_last`
    epochs'.  Held-out training sentences (their phrases never trained on) are scored per epoch;
    this recipe was chosen among the candidates on held-out and dev together (README).

    data_dir is the shared data root (holding sst2/) or the sst2 folder itself.
    """
    data_dir = dataset_dir(data_dir, "sst2")
    soft_labels = Path(soft_labels or SOFT_LABELS)
    if not soft_labels.exists():
        raise FileNotFoundError(f"no soft labels at {soft_labels}; make them with "
                                "flight_lstm.models.teacher.train_teacher and soft_labels")
    texts, labels, logits, notes = read_soft_labels(soft_labels)
    if (notes["seed"], notes["holdout"]) != (seed, HOLDOUT):
        raise ValueError(f"{soft_labels} was made for another held-out split: {notes}")
    data = load_sst2(data_dir)
    held_out = holdout_split(data, HOLDOUT, seed)["held_out"]
    model, info = fit_sentiment(texts, labels, seed=seed, epochs=epochs, dev=held_out,
                                average_last=average_last, teacher=logits)
    files = [*(data_dir / f for f in ("train_phrases.tsv", "train.tsv", "dev.tsv")), soft_labels]
    command = command or (f"train_shipped_sentiment({str(data_dir)!r}, {str(out_dir)!r}, "
                          f"{str(soft_labels)!r})")
    training = training_record(info, seed, epochs, files, command)
    training["teacher"] = notes
    card = ModelCard(name="sst2-bilstm", version=version, kind="sentiment", created=now_iso(),
                     training=training,
                     metrics={"dev": evaluate_sentiment(model, *data["dev"]),
                              "held_out": evaluate_sentiment(model, *held_out),
                              "teacher_dev_accuracy": notes["teacher_dev_accuracy"],
                              "note": "held_out: 10% of the training sentences, kept out "
                                      "with their phrases; the recipe (augmentation, weight "
                                      "averaging) was chosen on held_out and dev together"})
    return model.save(out_dir, card)
