"""The registry that finds, resolves and loads versioned models, one per process and model path.

A model lives in `<root>/<name>/<version>/` as `model.pt` + `card.json`.  Roots are searched in
order, so a directory given in FLIGHT_LSTM_MODELS can shadow a packaged model of the same name and
version.  Loading is cached and locked so concurrent queries load each model once.  A model's
module, and torch with it, is imported when the first model of its kind loads, so the operators
and the server start without torch.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from flight_lstm import frequencies

from .card import CARD_FILE, ModelCard

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Kind:
    """A kind of model: the class that loads its weights, and the model used when none is named."""

    module: str
    class_name: str
    default: tuple[str, str]  # (name, version); version "" is the name's latest


KINDS = {
    "sentiment": Kind("flight_lstm.models.sentiment", "SentimentModel", ("sentiment-bilstm", "")),
    "forecast": Kind("flight_lstm.models.forecast", "ForecastModel", ("m4-hourly-lstm", "")),
    "anomaly": Kind("flight_lstm.models.anomaly", "AnomalyModel", ("anomaly-lstm", "")),
}
BY_FREQUENCY = "forecast"  # the kind whose references may name a frequency instead of a model


class ModelNotFound(ValueError):
    """A model reference that matches nothing of the requested kind."""


def model_class(kind: str):
    """The class of `kind`'s models; the one place where model modules, and torch, get imported."""
    return getattr(importlib.import_module(KINDS[kind].module), KINDS[kind].class_name)


def _version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions sort numerically and after non-numeric ones."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


class Registry:
    """Versioned models found under a list of root directories."""

    def __init__(self, dirs: list[str | Path]):
        self.dirs = [Path(d) for d in dirs]
        self._lock = threading.Lock()
        self._loaded: dict[str, object] = {}

    def cards(self) -> list[ModelCard]:
        """Every model found, first root winning when a name@version appears twice."""
        found: dict[str, ModelCard] = {}
        for root in self.dirs:
            for card_file in sorted(root.glob(f"*/*/{CARD_FILE}")):
                card = ModelCard.read(card_file.parent)
                found.setdefault(card.ref, card)
        return list(found.values())

    def resolve(self, kind: str, ref: str | None = None) -> ModelCard:
        """Card for `name` (latest version), `name@version`, or the kind's default (None).

        A forecast reference may instead be a frequency (flight_lstm/frequencies.py: 'monthly', or
        a seasonal period such as '12'), unless a model has that name: the model whose card lists
        that frequency, else the kind's default."""
        if kind not in KINDS:
            raise ModelNotFound(f"unknown model kind {kind!r}; kinds are {', '.join(KINDS)}")
        if ref is None:
            name, version = KINDS[kind].default
        else:
            name, _, version = ref.strip().partition("@")
        cards = self.cards()
        same_name = [c for c in cards if c.name == name]
        matches = [c for c in same_name if c.kind == kind and version in ("", c.version)]
        if matches:
            return max(matches, key=lambda c: _version_key(c.version))
        freq = frequencies.reference(name) if kind == BY_FREQUENCY and ref is not None and not version else None
        if freq is not None:
            return self._for_frequency(kind, freq, cards)
        available = sorted(c.ref for c in cards if c.kind == kind)
        listing = ", ".join(available) if available else "none"
        wanted = ref if ref is not None else f"default {name}@{version}"
        if same_name and all(c.kind != kind for c in same_name):
            problem = f"{name!r} is a {same_name[0].kind} model, not a {kind} model"
        else:
            problem = f"no {kind} model {wanted!r}"
        # No folders named: this message reaches clients (FLIGHT_LSTM_MODELS says where to look).
        raise ModelNotFound(f"{problem}; available {kind} models: {listing}")

    def _for_frequency(self, kind: str, freq: str | int, cards: list[ModelCard]) -> ModelCard:
        """The latest version of the first model (in root order: FLIGHT_LSTM_MODELS first) whose
        card's optional `frequencies` lists `freq` (a name, or its seasonal period); else the
        kind's default."""
        period = frequencies.period_of(freq)
        listing = [c for c in cards if c.kind == kind and period in _card_periods(c)]
        if not listing:
            return self.resolve(kind)
        same_name = [c for c in listing if c.name == listing[0].name]
        return max(same_name, key=lambda c: _version_key(c.version))

    def load(self, kind: str, ref: str | None = None):
        """The loaded model for a reference, loaded once and shared across threads."""
        card = self.resolve(kind, ref)
        with self._lock:
            model = self._loaded.get(card.path)
            if model is None:
                model = model_class(kind).load(Path(card.path))
                self._loaded[card.path] = model
            return model


def _card_periods(card: ModelCard) -> set[int]:
    """Seasonal periods of the frequencies a card lists (names or periods; others are ignored)."""
    listed = card.frequencies or ()
    return {frequencies.period_of(f) for f in listed if frequencies.reference(str(f)) is not None}


@functools.lru_cache(maxsize=None)
def _registry_for(dirs: tuple[str, ...]) -> Registry:
    return Registry(list(dirs))


def _env_dirs() -> list[str]:
    return [d for d in os.environ.get("FLIGHT_LSTM_MODELS", "").split(os.pathsep) if d]


def user_models_dir() -> Path:
    """Where `flight-lstm train --source ...` registers new versions unless told otherwise."""
    extra = _env_dirs()
    if extra:
        return Path(extra[0])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "flight-lstm" / "models"


def default_registry() -> Registry:
    """The process's registry over FLIGHT_LSTM_MODELS (os.pathsep-separated, searched first), the
    user's models directory, then the packaged weights.  The environment is read on every call, and
    each set of directories keeps one registry, so a changed FLIGHT_LSTM_MODELS takes effect and
    models already loaded from the same directories are not loaded again."""
    dirs = (*_env_dirs(), str(user_models_dir()), str(PACKAGED_WEIGHTS))
    return _registry_for(tuple(dict.fromkeys(dirs)))
