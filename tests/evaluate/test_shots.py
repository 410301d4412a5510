"""In-context example selection: random (seeded per item), RICES (most similar last, features cached on disk),
MMLU's dev questions of the same subject."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mmgpt.evaluate.shots import ModelFeatures, RandomShots, RicesShots, SubjectShots, cached_features


@dataclass(frozen=True)
class Item:
    key: int
    image: Path
    subject: str = "s"


def items(root: Path, n: int) -> list[Item]:
    out = []
    for k in range(n):
        (root / f"{k}.jpg").write_bytes(b"x")
        out.append(Item(k, root / f"{k}.jpg"))
    return out


def test_random_examples_are_seeded_per_item(tmp_path):
    support = items(tmp_path, 20)
    shots = RandomShots(support)
    question = support[3]
    first = shots.select(question, 4, seed=42)
    assert len(first) == 4 and question not in first  # never its own example
    assert RandomShots(list(support)).select(question, 4, seed=42) == first  # any order of calls, any process
    assert shots.select(question, 4, seed=43) != first  # another trial, other examples
    assert shots.select(question, 0, seed=42) == []
    with pytest.raises(ValueError, match="25 in-context examples asked for, but the support set has only 19"):
        shots.select(question, 25, seed=42)


class Fixed:
    """A feature encoder with known vectors (by file name), counting its calls."""

    name = "fixed"

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors, self.calls = vectors, 0

    def __call__(self, images):
        self.calls += 1
        rows = torch.tensor([self.vectors[Path(i).name] for i in images], dtype=torch.float32)
        return torch.nn.functional.normalize(rows, dim=-1)


def test_rices_picks_the_most_similar_last_and_caches(tmp_path):
    support = items(tmp_path, 4)
    (tmp_path / "q.jpg").write_bytes(b"x")
    question = Item(99, tmp_path / "q.jpg")
    vectors = {"0.jpg": [1, 0], "1.jpg": [0.9, 0.1], "2.jpg": [0, 1], "3.jpg": [0.6, 0.4], "q.jpg": [1, 0]}
    encoder = Fixed(vectors)
    shots = RicesShots(support, encoder, tmp_path / "cache")
    assert [s.key for s in shots.select(question, 3, seed=0)] == [3, 1, 0]  # ascending similarity: nearest last
    assert len(list((tmp_path / "cache").glob("features-*.pt"))) == 1
    calls = encoder.calls
    RicesShots(support, encoder, tmp_path / "cache")
    assert encoder.calls == calls  # read from the cache
    (tmp_path / "0.jpg").write_bytes(b"changed")
    import os

    os.utime(tmp_path / "0.jpg", ns=(1, 1))
    cached_features(encoder, [s.image for s in support], tmp_path / "cache")
    assert encoder.calls == calls + 1  # a changed file is encoded again


def test_model_features_come_from_the_vision_encoder(tiny_world, world):
    model, _ = tiny_world
    images = sorted((world / "heldout" / "images").glob("*.png"))[:2]
    features = ModelFeatures(model, "tiny-world")(images)
    assert features.shape == (2, model.config.vision.width)
    assert torch.allclose(features.norm(dim=-1), torch.ones(2))


def test_mmlu_examples_are_the_subject_dev_questions():
    dev = [Item(k, None, "anatomy") for k in range(3)] + [Item(9, None, "law")]
    shots = SubjectShots(dev)
    assert [s.key for s in shots.select(Item(50, None, "anatomy"), 2, seed=0)] == [0, 1]
    with pytest.raises(ValueError, match="MMLU subject 'law' has 1 dev questions; 2 shots asked for"):
        shots.select(Item(51, None, "law"), 2, seed=0)


def test_clip_features_from_a_clip_directory(tmp_path, world):
    """RICES with a given CLIP (a transformers folder): projected image embeddings, unit norm."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from mmgpt.evaluate.shots import ClipFeatures

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=small, vision_config={**small, "image_size": 32, "patch_size": 16}, projection_dim=8
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    images = sorted((world / "heldout" / "images").glob("*.png"))[:3]
    features = ClipFeatures(tmp_path / "clip")(images)
    assert features.shape == (3, 8) and torch.allclose(features.norm(dim=-1), torch.ones(3))
