"""BiLSTM sentence sentiment: embedding -> BiLSTM -> masked max+mean pooling -> one logit.

Scores are 2*sigmoid(logit)-1 in [-1, 1].  Inference sorts rows by token count and runs buckets of
similar length as packed sequences, so padding costs little and long texts do not slow short ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import BaseModel, now_iso, seed_everything, training_record
from .registry import ModelCard
from .text import PAD, Encoded, build_vocab, encode, tokenize

BATCH_ROWS = 512  # inference rows per bucket
BATCH_TOKENS = 65_536  # inference cap on rows x longest row per bucket (bounds memory)


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
        ids, lengths, labels = batch
        return nn.functional.binary_cross_entropy_with_logits(self(ids, lengths), labels)

    def encode(self, texts: pa.Array | pa.ChunkedArray) -> Encoded:
        return encode(texts, self.vocab)

    def logits(self, enc: Encoded) -> np.ndarray:
        """Logits for encoded rows; NaN for rows without tokens."""
        out = np.full(len(enc), np.nan)
        rows = np.flatnonzero(enc.lengths > 0)
        rows = rows[np.argsort(enc.lengths[rows], kind="stable")]
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            start = 0
            while start < len(rows):
                stop = min(start + BATCH_ROWS, len(rows))
                longest = int(enc.lengths[rows[stop - 1]])
                stop = min(stop, start + max(1, BATCH_TOKENS // longest))
                batch = rows[start:stop]
                ids = torch.from_numpy(enc.pad(batch))
                lengths = torch.from_numpy(enc.lengths[batch])
                out[batch] = self(ids, lengths).double().numpy()
                start = stop
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
    data_dir = Path(data_dir)
    names = {"train": "train.tsv", "dev": "dev.tsv", "phrases": "train_phrases.tsv"}
    return {split: _read_tsv(data_dir / file) for split, file in names.items()}


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


def _batches(enc: Encoded, labels: np.ndarray, batch_size: int):
    """Epoch iterator: shuffled buckets of rows with similar length."""
    keep = np.flatnonzero(enc.lengths > 0)

    def epoch(rng: np.random.Generator):
        noisy = enc.lengths[keep] + rng.uniform(0, 2, len(keep))
        order = keep[np.argsort(noisy)]
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for k in rng.permutation(len(chunks)):
            rows = chunks[k]
            yield (torch.from_numpy(enc.pad(rows)), torch.from_numpy(enc.lengths[rows]),
                   torch.from_numpy(labels[rows].astype(np.float32)))

    return epoch


def fit_sentiment(texts: pa.Array, labels: np.ndarray, *, seed: int = 0, epochs: int = 8,
                  dev: tuple[pa.Array, np.ndarray] | None = None, vocab_size: int = 14_000,
                  embed_dim: int = 128, hidden: int = 128, dropout: float = 0.5,
                  batch_size: int = 128, lr: float = 3e-3, patience: int = 3,
                  progress: bool = True) -> tuple[SentimentModel, dict[str, Any]]:
    """Train a SentimentModel; select the epoch by accuracy on `dev` (or a 10% held-out split)."""
    rng = seed_everything(seed)
    labels = np.asarray(labels, dtype=np.int64)
    if dev is None:
        perm = rng.permutation(len(labels))
        cut = max(1, len(labels) // 10)
        dev = (texts.take(pa.array(perm[:cut])), labels[perm[:cut]])
        texts, labels = texts.take(pa.array(perm[cut:])), labels[perm[cut:]]
    vocab = build_vocab(tokenize(texts), vocab_size)
    model = SentimentModel(vocab, embed_dim=embed_dim, hidden=hidden, dropout=dropout)
    enc, dev_enc = model.encode(texts), model.encode(dev[0])
    dev_pos = np.asarray(dev[1]) == 1

    def dev_error() -> float:
        return float(np.mean((model.logits(dev_enc) > 0) != dev_pos))

    info = model.fit(_batches(enc, labels, batch_size), dev_error, rng=rng, epochs=epochs, lr=lr,
                     patience=patience, desc="sentiment", progress=progress)
    info.update(vocab_size=len(vocab), train_rows=len(labels), dev_rows=len(dev[1]),
                hparams=dict(embed_dim=embed_dim, hidden=hidden, dropout=dropout,
                             batch_size=batch_size, lr=lr, patience=patience))
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


def train_shipped_sentiment(data_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                            epochs: int = 8, command: str | None = None) -> ModelCard:
    """The shipped sst2-bilstm@1: phrases + train sentences, selected and evaluated on dev.

    data_dir is the shared data root (holding sst2/) or the sst2 folder itself.
    """
    data_dir = Path(data_dir)
    if (data_dir / "sst2").is_dir():
        data_dir = data_dir / "sst2"
    data = load_sst2(data_dir)
    texts = pa.concat_arrays([data["phrases"][0], data["train"][0]])
    labels = np.concatenate([data["phrases"][1], data["train"][1]])
    model, info = fit_sentiment(texts, labels, seed=seed, epochs=epochs, dev=data["dev"])
    files = [data_dir / f for f in ("train_phrases.tsv", "train.tsv", "dev.tsv")]
    command = command or f"train_shipped_sentiment({str(data_dir)!r}, {str(out_dir)!r})"
    card = ModelCard(name="sst2-bilstm", version="1", kind="sentiment", created=now_iso(),
                     training=training_record(info, seed, epochs, files, command),
                     metrics={"dev": evaluate_sentiment(model, *data["dev"]),
                              "note": "dev also selected the best epoch"})
    return model.save(out_dir, card)
