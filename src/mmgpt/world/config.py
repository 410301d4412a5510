"""WorldConfig: what ``mmgpt world generate`` writes. Imports nothing heavy, so the CLI can show its defaults."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SIZE = 96
# An upper bound: BPE on the world's small vocabulary stops earlier (885 tokens; 888 with the special tokens).
VOCAB_SIZE = 1024


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    scenes: int = 1000
    heldout: int = 100
    language: int = 2000
    heldout_language: int = 200
    image_size: int = IMAGE_SIZE
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self) -> None:
        for key in ("scenes", "heldout", "language", "heldout_language"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
