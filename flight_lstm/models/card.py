"""The model card: what a model is, how it was made and how well it did, saved beside its weights.

Its own module because both the models (which write cards) and the registry (which reads them)
need it, and neither should import the other for it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE, WEIGHTS_FILE = "card.json", "model.pt"


@dataclass
class ModelCard:
    """What a model is, how it was trained and how well it did; `path` is set when found on disk."""

    name: str
    version: str
    kind: str
    created: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Forecast models: the frequencies the model serves (names such as 'monthly', or seasonal
    # periods); the registry picks the model for a series' frequency by this list.
    frequencies: list[str | int] = field(default_factory=list)
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
