"""BiLSTM sentence sentiment: embedding -> BiLSTM -> masked max+mean pooling -> class logits.

Scores are P(positive) - P(negative) in [-1, 1] (with one logit, 2*sigmoid(logit)-1: the same).
Inference sorts rows by token count and runs buckets of similar length as packed sequences, so
padding costs little and long texts do not slow short ones.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import BaseModel
from .checks import between_batches
from .data import CLASSES
from .text import PAD, UNK, Encoded, WordPieces, encode

BATCH_ROWS = 512  # inference rows per bucket
BATCH_TOKENS = 65_536  # inference cap on rows x longest row per bucket (bounds memory)


def sentiment_loss(logits: torch.Tensor, three: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of cross-entropy on the three classes where a text has a three-class
    label, and on negative against positive where it has a two-class one (-1: no such label),
    since a two-class label tells the polarity, not that the text is not neutral."""
    loss = logits.new_zeros(())
    if (has := three >= 0).any():
        loss = loss + nn.functional.cross_entropy(logits[has], three[has], reduction="sum")
    if (has := binary >= 0).any():
        loss = loss + nn.functional.cross_entropy(logits[has][:, [0, 2]], binary[has], reduction="sum")
    return loss / len(logits)


def mean_of_pieces(table: torch.Tensor, ids: np.ndarray, counts: np.ndarray) -> torch.Tensor:
    """Per word, the mean of its pieces' rows of `table` (`WordPieces.split`'s ids and counts):
    where a word new to a student starts, so it starts near its kin."""
    rows = torch.from_numpy(np.repeat(np.arange(len(counts)), counts))
    total = torch.zeros(len(counts), table.shape[1], dtype=table.dtype)
    total.index_add_(0, rows, table[torch.from_numpy(ids)])
    return total / torch.from_numpy(counts).to(table.dtype)[:, None]


class SentimentModel(BaseModel):
    """With `classes` = 3, logits for negative, neutral, positive, and words the vocabulary
    lacks read as word `pieces` (ids after the words'); with 1 (sst2-bilstm@4 and older), one
    positive-vs-negative logit and UNK for unknown words."""

    kind = "sentiment"

    def __init__(self, vocab: list[str], embed_dim: int = 128, hidden: int = 128,
                 dropout: float = 0.5, classes: int = 1, pieces: list[str] | None = None):
        if classes not in (1, len(CLASSES)):
            raise ValueError(f"a sentiment model has 1 or {len(CLASSES)} outputs, not {classes}")
        extra = {"classes": classes, "pieces": list(pieces)} if classes > 1 or pieces else {}
        super().__init__(vocab=list(vocab), embed_dim=embed_dim, hidden=hidden, dropout=dropout, **extra)
        self.classes = classes
        self.vocab = pa.array(vocab, pa.string())
        self.pieces = WordPieces(pieces, offset=len(vocab) + 2) if pieces else None
        self.embed = nn.Embedding(len(vocab) + 2 + len(pieces or ()), embed_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(4 * hidden, classes)

    def grown(self, words: list[str]) -> SentimentModel:
        """A copy that also knows `words` (those it lacks, appended after its words): every weight
        is kept, and a new word starts from what this model read for it: the mean of its word
        pieces' embeddings, or the unknown-word embedding."""
        known = set(self.vocab.to_pylist())
        new = [w for w in dict.fromkeys(words) if w not in known]
        copy = SentimentModel(self.vocab.to_pylist() + new, **{k: v for k, v in self.config.items() if k != "vocab"})
        state = self.state_dict()
        embed = state["embed.weight"]
        words_end = len(self.vocab) + 2
        if self.pieces and new:
            start = mean_of_pieces(embed, *self.pieces.split(new))
        else:
            start = embed[UNK].expand(len(new), -1)
        state["embed.weight"] = torch.cat([embed[:words_end], start, embed[words_end:]])
        copy.load_state_dict(state)
        return copy

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes), or (batch,) with one class, for padded ids (batch, time)
        with true lengths (all >= 1)."""
        x = self.drop(self.embed(ids))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True,
                                   total_length=ids.shape[1])
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)
        h_max = h.masked_fill(~mask, float("-inf")).amax(dim=1)
        h_mean = h.sum(dim=1) / lengths[:, None].to(h.dtype)
        logits = self.out(self.drop(torch.cat([h_max, h_mean], dim=1)))
        return logits.squeeze(-1) if self.classes == 1 else logits

    def training_loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """One logit: BCE on (ids, lengths, labels).  Three classes: (ids, lengths, three,
        binary[, teacher logits]), the labels scored by `sentiment_loss`; with the teacher's
        logits (distillation, Tang et al. 2019), plus the squared gap to them up to a shift
        (softmax ignores one), so the teacher's errors on labelled text are outvoted."""
        if self.classes == 1:
            ids, lengths, labels = batch
            return nn.functional.binary_cross_entropy_with_logits(self(ids, lengths), labels)
        ids, lengths, three, binary, *teacher = batch
        logits = self(ids, lengths)
        loss = sentiment_loss(logits, three, binary)
        if teacher:
            gap = (logits - logits.mean(dim=1, keepdim=True)) - (teacher[0] - teacher[0].mean(dim=1, keepdim=True))
            loss = loss + gap.pow(2).mean()
        return loss

    def encode(self, texts: pa.Array | pa.ChunkedArray) -> Encoded:
        return encode(texts, self.vocab, self.pieces)

    def logits(self, enc: Encoded) -> np.ndarray:
        """Logits (rows,) or (rows, classes) for encoded rows; NaN for rows without tokens."""
        out = np.full((len(enc),) if self.classes == 1 else (len(enc), self.classes), np.nan)
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

    def probabilities(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """(rows, 3) probabilities of negative, neutral, positive (a one-logit model never says
        neutral); NaN rows for null, empty or token-less texts."""
        logits = self.logits(self.encode(texts))
        if self.classes == 1:
            positive = 1.0 / (1.0 + np.exp(-logits))
            return np.column_stack([1.0 - positive, np.where(np.isnan(positive), np.nan, 0.0), positive])
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def score(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Sentiment in [-1, 1] per text (float64), P(positive) - P(negative); NaN for null,
        empty or token-less texts."""
        probabilities = self.probabilities(texts)
        return probabilities[:, 2] - probabilities[:, 0]
