"""Shared base for all models: persistence and the seeded training loop.

Each model is one nn.Module subclass that declares its `kind`, keeps its constructor arguments in
`self.config` and implements `training_loss`.  The base then saves/loads it as
`<root>/<name>/<version>/{model.pt,card.json}` and trains it the same way as every other model.
"""

from __future__ import annotations

import collections
import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .card import CARD_FILE, WEIGHTS_FILE, ModelCard


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (weight init, dropout) and return the numpy generator used for batching."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


class BaseModel(nn.Module):
    kind: ClassVar[str]
    card: ModelCard | None

    def __init__(self, **config: Any):
        super().__init__()
        self.config = config
        self.card = None

    def training_loss(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    # -- persistence -------------------------------------------------------------------------

    def save(self, out_dir: str | Path, card: ModelCard) -> ModelCard:
        """Write model.pt (parameters as float16) and card.json under out_dir/name/version.

        The live parameters are rounded the same way, so the saved and live model agree exactly.
        """
        directory = Path(out_dir) / card.name / card.version
        directory.mkdir(parents=True, exist_ok=True)
        params = {name for name, _ in self.named_parameters()}
        self.round_to_float16()
        state = {k: (v.half() if k in params else v) for k, v in self.state_dict().items()}
        torch.save({"config": self.config, "state": state}, directory / WEIGHTS_FILE)
        card.path = str(directory)
        card.write(directory)
        self.card = card
        return card

    def round_to_float16(self) -> None:
        """Round parameters to what float16 storage keeps, so evaluation sees the shipped model."""
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(p.half().float())

    @classmethod
    def load(cls, directory: str | Path) -> BaseModel:
        directory = Path(directory)
        blob = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model = cls(**blob["config"])
        model.load_state_dict(blob["state"])  # copies float16 into the float32 parameters
        model.eval()
        model.card = ModelCard.read(directory) if (directory / CARD_FILE).exists() else None
        return model

    # -- training ----------------------------------------------------------------------------

    def fit(
        self,
        batches: Callable[[np.random.Generator], Iterable[Any]],
        validate: Callable[[], float],
        *,
        rng: np.random.Generator,
        epochs: int,
        lr: float,
        weight_decay: float = 1e-2,
        clip: float = 1.0,
        patience: int = 3,
        average_last: int = 0,
        desc: str = "train",
        progress: bool = True,
    ) -> dict[str, Any]:
        """AdamW with cosine decay and gradient clipping; keeps the weights of the best validation
        epoch (lowest `validate()`), stopping after `patience` epochs without improvement, rounded
        to float16 precision as they will be stored.

        With `average_last` = k, all epochs run and the kept weights are the mean of the last k
        epochs' weights instead (Polyak averaging): a small validation set is too noisy to pick
        one epoch well, and the mean is usually at least as good as the epochs it averages."""
        if average_last < 0:
            raise ValueError(f"average_last must be 0 (off) or more, got {average_last}")
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs))
        )
        best, best_state, best_epoch, history = math.inf, None, -1, []
        recent: collections.deque = collections.deque(maxlen=max(average_last, 1))
        started, steps = time.perf_counter(), None
        val_name = _score_name(validate)
        for epoch in range(epochs):
            self.train()
            total, count = 0.0, 0
            # An epoch's batches come from a generator: the first epoch's count is the bar's total after it.
            bar = tqdm(batches(rng), desc=f"{desc} {epoch + 1}/{epochs}", total=steps, disable=not progress,
                       mininterval=5, leave=False)
            for batch in bar:
                loss = self.training_loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.parameters(), clip)
                opt.step()
                total, count = total + loss.item(), count + 1
                bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            sched.step()
            steps = count
            self.eval()
            with torch.inference_mode():
                score = float(validate())
            history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1), "val": score})
            if progress:
                elapsed = time.perf_counter() - started
                left = elapsed / (epoch + 1) * (epochs - epoch - 1)
                tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: train loss {total / max(count, 1):.4f}, "
                           f"val {score:.4f} ({val_name}, lower is better); {_duration(elapsed)} so far, "
                           f"about {_duration(left)} left (less if it stops early)", file=sys.stderr)
            if average_last:
                recent.append(copy.deepcopy(self.state_dict()))
            elif score < best:
                best, best_state, best_epoch = score, copy.deepcopy(self.state_dict()), epoch + 1
            elif epoch + 1 - best_epoch >= patience:
                break
        kept = {}
        if average_last:
            best_state = _mean_state(list(recent))
            kept["averaged_epochs"] = [h["epoch"] for h in history[-len(recent):]]
        elif best_state is not None:
            kept["best_epoch"] = best_epoch
        if best_state is not None:
            self.load_state_dict(best_state)
        self.round_to_float16()
        self.eval()
        if average_last:
            with torch.inference_mode():
                best = float(validate())
        return {
            "epochs_run": len(history),
            **kept,
            "best_val": best,
            "seconds": round(time.perf_counter() - started, 1),
            "history": history,
        }


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _score_name(validate: Callable[[], float]) -> str:
    """What a validation score is, from its function's name (calib_mae: "calib mae")."""
    name = getattr(validate, "__name__", "")
    return "validation loss" if name in ("", "validate", "<lambda>") else name.replace("_", " ")


def _mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point weights; other entries (counters) from the last."""
    return {name: (torch.stack([s[name] for s in states]).mean(dim=0)
                   if value.is_floating_point() else value)
            for name, value in states[-1].items()}
