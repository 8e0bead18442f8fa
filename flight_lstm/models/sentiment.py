"""BiLSTM sentence sentiment: embedding -> BiLSTM -> masked max+mean pooling -> one logit.

Scores are 2*sigmoid(logit)-1 in [-1, 1].  Inference sorts rows by token count and runs buckets of
similar length as packed sequences, so padding costs little and long texts do not slow short ones.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import BaseModel
from .checks import between_batches
from .text import PAD, UNK, Encoded, encode

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

    def grown(self, words: list[str]) -> SentimentModel:
        """A copy that also knows `words` (those it lacks, appended): every weight is kept, and a
        new word starts from the unknown-word embedding, which is what this model read for it."""
        known = set(self.vocab.to_pylist())
        vocab = self.vocab.to_pylist() + [w for w in dict.fromkeys(words) if w not in known]
        copy = SentimentModel(vocab, **{k: v for k, v in self.config.items() if k != "vocab"})
        state = self.state_dict()
        embed = state["embed.weight"]
        state["embed.weight"] = torch.cat([embed, embed[UNK].expand(len(vocab) + 2 - len(embed), -1)])
        copy.load_state_dict(state)
        return copy

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
