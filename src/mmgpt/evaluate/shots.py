"""In-context examples: which support items are shown before each question.

- :class:`RandomShots` - OpenFlamingo's: a query set of at most ``query_set_size`` (2048) support items drawn with
  the trial's seed, then ``k`` of them per question. Here each question's draw is seeded by (seed, item key), so
  the examples of an item do not depend on batching, sharding or resuming, and a rerun shows the same examples.
- :class:`RicesShots` - Retrieval-based In-Context Example Selection (Yang et al. 2022; OpenFlamingo's ``rices.py``):
  the ``k`` support items whose image features are most similar (cosine) to the question's, the most similar
  last (nearest the question). Features come from the model's own vision encoder (patch features averaged) or from
  a given CLIP (``transformers`` ``CLIPModel.get_image_features``), and are cached on disk
  (:func:`cached_features`), so the support set is encoded once per encoder.
- :class:`SubjectShots` - MMLU's: the first ``k`` dev questions of the same subject, in file order (the original
  five-shot evaluation).

A support item is never its own example (an equal item), so pointing the support set at the evaluation file
cannot leak answers.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from mmgpt.model.contract import VisionLanguageModel

QUERY_SET_SIZE = 2048
FEATURE_BATCH = 32


class ShotSelector(Protocol):
    def select(self, item: Any, k: int, seed: int) -> list[Any]: ...


def _same(a: Any, b: Any) -> bool:
    """The same question (items are frozen dataclasses: equal fields, equal items); MMLU's dev and test files
    number their rows alike, so a key alone would not tell."""
    return a == b


class RandomShots:
    """Random examples from a seeded query set (see the module docstring)."""

    def __init__(self, support: Sequence[Any], *, query_set_size: int = QUERY_SET_SIZE) -> None:
        if not support:
            raise ValueError("the support set is empty; in-context examples need support items (--support)")
        self.support = list(support)
        self.query_set_size = query_set_size

    def select(self, item: Any, k: int, seed: int) -> list[Any]:
        if k == 0:
            return []
        size = min(len(self.support), self.query_set_size)
        query_set = random.Random(seed).sample(range(len(self.support)), size)
        pool = [i for i in query_set if not _same(self.support[i], item)]
        if len(pool) < k:
            raise ValueError(f"{k} in-context examples asked for, but the support set has only {len(pool)}")
        chosen = random.Random(f"{seed}:{item.key}").sample(pool, k)
        return [self.support[i] for i in chosen]


class SubjectShots:
    """The first ``k`` support items of the item's subject (MMLU dev), in order."""

    def __init__(self, support: Sequence[Any]) -> None:
        self.by_subject: dict[str, list[Any]] = {}
        for s in support:
            self.by_subject.setdefault(s.subject, []).append(s)

    def select(self, item: Any, k: int, seed: int) -> list[Any]:
        pool = [s for s in self.by_subject.get(item.subject, []) if not _same(s, item)]
        if len(pool) < k:
            raise ValueError(f"MMLU subject {item.subject!r} has {len(pool)} dev questions; {k} shots asked for")
        return pool[:k]


# ---------------------------------------------------------------------------------------------- features
class FeatureEncoder(Protocol):
    name: str  # what the features depend on: part of the cache key

    def __call__(self, images: Sequence[Any]) -> torch.Tensor: ...  # [N, d], unit norm


class ModelFeatures:
    """The model's own vision encoder: patch features [N, p, d] averaged over patches, unit norm."""

    def __init__(self, model: VisionLanguageModel, name: str) -> None:
        self.model, self.name = model, f"model:{name}"
        self.transform = model.image_transform()

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        pixels = torch.stack([self.transform(image) for image in images]).to(self.model.device)
        features = self.model.vision_encoder(pixels).float().mean(dim=1)
        return torch.nn.functional.normalize(features, dim=-1).cpu()


class ClipFeatures:
    """A CLIP model directory (``transformers`` layout): its projected image embeddings, unit norm (RICES as
    OpenFlamingo computes it with open_clip's ``encode_image``)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: no CLIP directory; point --rices-clip at a transformers CLIP folder")
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(path)
        self.name, self.device = f"clip:{Path(path).resolve()}", device

    @torch.no_grad()
    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        from mmgpt.data.images import load_image

        inputs = self.processor(images=[load_image(image) for image in images], return_tensors="pt")
        features = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        if not isinstance(features, torch.Tensor):  # transformers 5 returns an output object
            features = features.pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()


def _cache_key(encoder: FeatureEncoder, images: Sequence[Any]) -> str:
    digest = hashlib.sha1(encoder.name.encode())
    for image in images:
        path = Path(image)
        stamp = path.stat().st_mtime_ns if path.is_file() else 0
        digest.update(f"\n{path.resolve()}:{stamp}".encode())
    return digest.hexdigest()[:20]


def cached_features(
    encoder: FeatureEncoder,
    images: Sequence[Any],
    cache_dir: str | Path | None,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Features [N, d] of ``images`` (paths), read from ``cache_dir`` when this encoder already encoded exactly
    these files (same paths, same modification times), else computed and written there (atomically)."""
    file = Path(cache_dir) / f"features-{_cache_key(encoder, images)}.pt" if cache_dir is not None else None
    if file is not None and file.is_file():
        return torch.load(file, weights_only=True)
    parts = []
    for start in range(0, len(images), FEATURE_BATCH):
        parts.append(encoder(images[start : start + FEATURE_BATCH]))
        if on_progress is not None:
            on_progress(len(parts[-1]))
    features = torch.cat(parts) if parts else torch.zeros(0, 0)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary = file.with_suffix(f".{os.getpid()}.tmp")
        torch.save(features, temporary)
        os.replace(temporary, file)
    return features


class RicesShots:
    """The ``k`` most similar support items by image features, the most similar last."""

    def __init__(
        self, support: Sequence[Any], encoder: FeatureEncoder, cache_dir: str | Path | None, **kwargs: Any
    ) -> None:
        if not support:
            raise ValueError("the support set is empty; RICES needs support items (--support)")
        missing = [s for s in support if getattr(s, "image", None) is None]
        if missing:
            raise ValueError(
                "RICES retrieves by image; this support set has items without images (use --shots-by random)"
            )
        self.support = list(support)
        self.encoder, self.cache_dir = encoder, cache_dir
        self.features = cached_features(encoder, [s.image for s in self.support], cache_dir, **kwargs)
        self._queries: dict[Any, torch.Tensor] = {}

    def prepare(self, items: Sequence[Any]) -> None:
        """Encode the questions' images once (cached like the support set's)."""
        features = cached_features(self.encoder, [i.image for i in items], self.cache_dir)
        self._queries.update({item.key: f for item, f in zip(items, features, strict=True)})

    def select(self, item: Any, k: int, seed: int) -> list[Any]:
        if k == 0:
            return []
        query = self._queries.get(item.key)
        if query is None:
            query = self.encoder([item.image])[0]
        similarity = self.features @ query  # [N]
        order = torch.sort(similarity, descending=True, stable=True).indices.tolist()
        ranked = [i for i in order if not _same(self.support[i], item)]
        if len(ranked) < k:
            raise ValueError(f"{k} in-context examples asked for, but the support set has only {len(ranked)}")
        return [self.support[i] for i in reversed(ranked[:k])]
