"""The embedded default: the tiny OpenFlamingo of the generated world, pretrained and shipped in the package.

``src/mmgpt/assets/tiny-world/`` is a model directory like any other (``mmgpt.load`` reads it); it was made by
``mmgpt pretrain configs/tiny-world/pretrain.yaml`` then ``pretrain-2.yaml`` ... ``pretrain-5.yaml``
(docs/training.md) and is what ``mmgpt demo`` tunes.
"""

from __future__ import annotations

from pathlib import Path

TINY_WORLD_NAME = "tiny-world"
TINY_WORLD = Path(__file__).parent / "assets" / TINY_WORLD_NAME


def tiny_world_path() -> Path:
    if not (TINY_WORLD / "mmgpt.yaml").is_file():
        raise FileNotFoundError(
            f"the embedded tiny model is missing from {TINY_WORLD}; reinstall mmgpt, or rebuild it with the nine "
            "`mmgpt pretrain configs/tiny-world/pretrain*.yaml` stages in turn (docs/training.md lists them and the "
            "two `mmgpt world generate` runs they read), then copy build/tiny-pretrain-9/model there"
        )
    return TINY_WORLD
