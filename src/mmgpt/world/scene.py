"""The scenes of the generated world: its vocabulary, the ground truth of one image, and seeded sampling.

A scene is 1-6 shapes, each in its own cell of a 3 x 3 grid (so "the shape at the top left" is always one shape),
and optionally one word written in a band under the grid. The vocabulary is deliberately small - 6 colours,
5 shapes, 2 sizes, 9 positions, 12 words - so a model of a few million parameters learns it in minutes on CPU.
No word is a colour, shape, size or position name, so the metrics parse answers without ambiguity.

Every scene comes from ``random.Random(key)`` with a string key (``"{seed}:{split}:{index}"``): Python seeds
from a string with SHA-512, so the same key gives the same scene on every machine and every run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 195, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "moon", "tree", "fish", "bird", "book", "cake", "boat", "frog", "lamp")

GRID = 3
ROW_NAMES = ("top", "middle", "bottom")
COLUMN_NAMES = ("left", "centre", "right")
# Cell (row, column) -> its name; the middle row and centre column drop out of the name ("left", not "middle left").
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "top left",
    (0, 1): "top",
    (0, 2): "top right",
    (1, 0): "left",
    (1, 1): "centre",
    (1, 2): "right",
    (2, 0): "bottom left",
    (2, 1): "bottom",
    (2, 2): "bottom right",
}
MAX_SHAPES = 6
WORD_PROBABILITY = 0.5
JITTER = 2  # pixels a shape may sit off its cell's centre, at 96 px


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    row: int
    column: int
    dx: int = 0  # offset from the cell centre, in pixels at 96 px (scaled with the image)
    dy: int = 0

    @property
    def position(self) -> str:
        return POSITIONS[(self.row, self.column)]


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image. ``shapes`` are in reading order (row by row, left to right)."""

    id: str
    key: str  # the random key the scene (and its tasks) were drawn from
    shapes: tuple[Shape, ...]
    word: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", tuple(sorted(self.shapes, key=lambda s: (s.row, s.column))))
        cells = [(s.row, s.column) for s in self.shapes]
        if len(set(cells)) != len(cells):
            raise ValueError(f"scene {self.id}: two shapes share a cell {cells}")
        for shape in self.shapes:
            for value, allowed in ((shape.kind, SHAPES), (shape.colour, COLOURS), (shape.size, SIZES)):
                if value not in allowed:
                    raise ValueError(f"scene {self.id}: {value!r} is not one of {list(allowed)}")
        if self.word is not None and self.word not in WORDS:
            raise ValueError(f"scene {self.id}: word {self.word!r} is not one of {list(WORDS)}")

    def count(self, *, colour: str | None = None, kind: str | None = None) -> int:
        return sum((colour in (None, s.colour)) and (kind in (None, s.kind)) for s in self.shapes)

    def at(self, position: str) -> Shape | None:
        return next((s for s in self.shapes if s.position == position), None)

    @property
    def signature(self) -> tuple:
        """What the image shows (jitter aside): two scenes with equal signatures look the same."""
        return (tuple((s.kind, s.colour, s.size, s.row, s.column) for s in self.shapes), self.word)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "word": self.word,
            "shapes": [
                {
                    "kind": s.kind,
                    "colour": s.colour,
                    "size": s.size,
                    "position": s.position,
                    "row": s.row,
                    "column": s.column,
                    "dx": s.dx,
                    "dy": s.dy,
                }
                for s in self.shapes
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        shapes = [
            Shape(s["kind"], s["colour"], s["size"], s["row"], s["column"], s.get("dx", 0), s.get("dy", 0))
            for s in data["shapes"]
        ]
        return cls(id=str(data["id"]), key=str(data["key"]), shapes=tuple(shapes), word=data.get("word"))


def scene_key(seed: int, split: str, index: int) -> str:
    return f"{seed}:{split}:{index}"


def sample_scene(
    key: str, *, id: str, max_shapes: int = MAX_SHAPES, word_probability: float = WORD_PROBABILITY
) -> Scene:
    """The scene of ``key``: 1..max_shapes shapes in distinct cells, a word with probability ``word_probability``."""
    if not 1 <= max_shapes <= GRID * GRID:
        raise ValueError(f"max_shapes must be in 1..{GRID * GRID} (one shape per grid cell), got {max_shapes}")
    rng = random.Random(key)
    cells = rng.sample(sorted(POSITIONS), rng.randint(1, max_shapes))
    shapes = [
        Shape(
            kind=rng.choice(SHAPES),
            colour=rng.choice(list(COLOURS)),
            size=rng.choice(SIZES),
            row=row,
            column=column,
            dx=rng.randint(-JITTER, JITTER),
            dy=rng.randint(-JITTER, JITTER),
        )
        for row, column in cells
    ]
    word = rng.choice(WORDS) if rng.random() < word_probability else None
    return Scene(id=id, key=key, shapes=tuple(shapes), word=word)


def sample_scenes(seed: int, split: str, count: int, *, exclude: Sequence[Scene] = (), prefix: str = "") -> list[Scene]:
    """``count`` scenes of ``split``; scenes that look like one in ``exclude`` are skipped (held-out scenes never
    repeat a training image). Ids are ``{prefix}{n:05d}``."""
    seen = {scene.signature for scene in exclude}
    scenes: list[Scene] = []
    index = 0
    while len(scenes) < count:
        scene = sample_scene(scene_key(seed, split, index), id=f"{prefix}{len(scenes):05d}")
        index += 1
        if scene.signature not in seen:
            scenes.append(scene)
    return scenes
