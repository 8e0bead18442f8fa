"""Model cards and the registry that finds, resolves and loads versioned models.

A model lives in `<root>/<name>/<version>/` as `model.pt` + `card.json`.  Roots are searched in
order, so a directory given in FLIGHT_LSTM_MODELS can shadow a packaged model of the same name and
version.  Loading is cached and locked so concurrent queries load each model once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("sentiment", "forecast")
DEFAULTS = {"sentiment": ("sst2-bilstm", ""), "forecast": ("m4-hourly-lstm", "1")}
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"
CARD_FILE, WEIGHTS_FILE = "card.json", "model.pt"


class ModelNotFound(ValueError):
    """A model reference that matches nothing of the requested kind."""


@dataclass
class ModelCard:
    """What a model is, how it was trained and how well it did; `path` is set when found on disk."""

    name: str
    version: str
    kind: str
    created: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def write(self, directory: Path) -> None:
        fields = dataclasses.asdict(self)
        del fields["path"]  # where a card lives is a property of the install, not of the model
        (directory / CARD_FILE).write_text(json.dumps(fields, indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> ModelCard:
        fields = json.loads((directory / CARD_FILE).read_text())
        return cls(**{**fields, "version": str(fields["version"]), "path": str(directory)})


def _version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions sort numerically and after non-numeric ones."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class Registry:
    """Versioned models found under a list of root directories."""

    def __init__(self, dirs: list[str | Path]):
        self.dirs = [Path(d) for d in dirs]
        self._lock = threading.Lock()
        self._loaded: dict[str, Any] = {}

    def cards(self) -> list[ModelCard]:
        """Every model found, first root winning when a name@version appears twice."""
        found: dict[str, ModelCard] = {}
        for root in self.dirs:
            for card_file in sorted(root.glob(f"*/*/{CARD_FILE}")):
                card = ModelCard.read(card_file.parent)
                found.setdefault(card.ref, card)
        return list(found.values())

    def resolve(self, kind: str, ref: str | None = None) -> ModelCard:
        """Card for `name` (latest version), `name@version`, or the kind's default (None)."""
        if kind not in KINDS:
            raise ModelNotFound(f"unknown model kind {kind!r}; kinds are {', '.join(KINDS)}")
        if ref is None:
            name, version = DEFAULTS[kind]
        else:
            name, _, version = ref.strip().partition("@")
        cards = self.cards()
        same_name = [c for c in cards if c.name == name]
        matches = [c for c in same_name if c.kind == kind and version in ("", c.version)]
        if matches:
            return max(matches, key=lambda c: _version_key(c.version))
        available = sorted(c.ref for c in cards if c.kind == kind)
        listing = ", ".join(available) if available else "none"
        wanted = ref if ref is not None else f"default {name}@{version}"
        if same_name and all(c.kind != kind for c in same_name):
            problem = f"{name!r} is a {same_name[0].kind} model, not a {kind} model"
        else:
            problem = f"no {kind} model {wanted!r}"
        # No folders named: this message reaches clients (FLIGHT_LSTM_MODELS says where to look).
        raise ModelNotFound(f"{problem}; available {kind} models: {listing}")

    def load(self, kind: str, ref: str | None = None):
        """The loaded model for a reference, loaded once and shared across threads."""
        card = self.resolve(kind, ref)
        with self._lock:
            model = self._loaded.get(card.path)
            if model is None:
                from .base import model_class  # late: base imports this module

                model = model_class(kind).load(Path(card.path))
                self._loaded[card.path] = model
            return model


@functools.lru_cache(maxsize=None)
def _registry_for(dirs: tuple[str, ...]) -> Registry:
    return Registry(list(dirs))


def user_models_dir() -> Path:
    """Where `flight-lstm train --source ...` registers new versions unless told otherwise."""
    extra = [d for d in os.environ.get("FLIGHT_LSTM_MODELS", "").split(os.pathsep) if d]
    if extra:
        return Path(extra[0])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "flight-lstm" / "models"


def default_registry() -> Registry:
    """Registry over FLIGHT_LSTM_MODELS (os.pathsep-separated, searched first), the user's models
    directory, then the packaged weights."""
    extra = [d for d in os.environ.get("FLIGHT_LSTM_MODELS", "").split(os.pathsep) if d]
    return _registry_for(tuple(dict.fromkeys((*extra, str(user_models_dir()), str(PACKAGED_WEIGHTS)))))
