"""Where the image information goes: what a model's vision features hold about each grid cell, and what the whole
model reads of it.

For every cell of the world's 3 x 3 grid and an attribute (the shape's kind or colour), a ridge-regression probe is
fit on the features of most of the scenes and scored on the rest, counting only scenes where the cell holds a
shape. Two feature sets are read off the same images: the ViT's patch tokens (what the vision encoder saw) and the
perceiver's latents (what the language model's cross-attention can read). A probe that reads a cell from the
patches but not from the latents locates a loss in the perceiver.

A linear probe on the flattened latents may use WHICH latent holds a shape; cross-attention compares contents and
cannot. :func:`read_cells` measures the end of the path instead: the model reads each scene's grid caption
(``At the top left, no shape. At the top, a large red circle. ...``), and at each colour and kind word its
highest-scoring value of that attribute is compared with the truth - ViT, perceiver, cross-attention and language
model together, with no question format in the way.

    mmgpt world probe MODEL [--scenes 2000]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.data.collate import collate
from mmgpt.data.tokenize import TokenizedSample
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.world.describe import grid_caption
from mmgpt.world.render import render_scene
from mmgpt.world.scene import COLOURS, GRID, POSITIONS, SHAPES, Scene, sample_scenes

ATTRIBUTES = ("kind", "colour")
EMPTY = "empty"
VALUES = {"kind": SHAPES, "colour": tuple(COLOURS)}


def ridge_probes(
    features: torch.Tensor,
    label_sets: Sequence[Sequence[str]],
    *,
    ridge: float = 10.0,
    train_fraction: float = 0.8,
    scored: Sequence[Sequence[bool] | None] | None = None,
) -> list[float]:
    """Accuracy of a one-vs-rest ridge regression from ``features`` [n, ...] (flattened) to each of ``label_sets``:
    fit on the first ``train_fraction`` of the rows, scored on the rest where its ``scored`` is true (default: all).
    Every probe shares the features, so one solve (one factorisation of the Gram matrix) fits them all."""
    x = features.flatten(1).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    n = int(train_fraction * len(x))
    if not 0 < n < len(x):
        raise ValueError(f"train_fraction={train_fraction} leaves no rows to fit or to score among {len(x)}")
    blocks, targets = [], []
    for labels in label_sets:
        classes = sorted(set(labels))
        y = torch.zeros(len(x), len(classes), dtype=x.dtype)
        y[torch.arange(len(x)), torch.tensor([classes.index(label) for label in labels])] = 1
        blocks.append(len(classes))
        targets.append(y)
    y = torch.cat(targets, dim=1)
    a = x[:n]
    predicted = x[n:] @ torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=x.dtype), a.T @ y[:n])
    accuracies = []
    for i, (scores, truth) in enumerate(zip(predicted.split(blocks, 1), y[n:].split(blocks, 1), strict=True)):
        mask = None if scored is None else scored[i]
        mask = torch.ones(len(truth), dtype=torch.bool) if mask is None else torch.tensor(list(mask[n:]))
        if not mask.any():
            raise ValueError("no held-out row is scored; probe more scenes")
        accuracies.append(float((scores.argmax(1) == truth.argmax(1))[mask].double().mean()))
    return accuracies


def ridge_probe(
    features: torch.Tensor, labels: Sequence[str], *, scored: Sequence[bool] | None = None, **options: float
) -> float:
    """:func:`ridge_probes` for one set of labels."""
    return ridge_probes(features, [labels], scored=[scored], **options)[0]


@torch.no_grad()
def image_features(
    model: VisionLanguageModel, scenes: Sequence[Scene], *, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """``{"patches": [n, p, d_v], "latents": [n, l, d]}`` of each scene, rendered as the world renders it and
    preprocessed as the model preprocesses: its vision encoder's tokens, and what the model makes of each image
    (``embed_images``: a Flamingo's perceiver latents, a prefix model's input embeddings)."""
    transform = model.image_transform()
    patches, latents = [], []
    for start in range(0, len(scenes), batch_size):
        pixels = torch.stack([transform(render_scene(s)) for s in scenes[start : start + batch_size]])
        pixels = pixels.to(model.device)
        patches.append(model.vision_encoder(pixels).float().cpu())
        latents.append(model.embed_images(pixels).float().cpu())
    return {"patches": torch.cat(patches), "latents": torch.cat(latents)}


def cell_labels(scenes: Sequence[Scene], attribute: str, row: int, column: int) -> list[str]:
    """The ``attribute`` of the shape in cell (row, column) of each scene, or ``"empty"``."""
    shapes = (scene.at(POSITIONS[(row, column)]) for scene in scenes)
    return [EMPTY if shape is None else getattr(shape, attribute) for shape in shapes]


def probe_cells(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    scenes: int = 2000,
    seed: int = 0,
    ridge: float = 10.0,
) -> dict[str, Any]:
    """Per-cell probe accuracies: ``{"scenes": n, "features": {name: [tokens, width]}, "cells": [[row, column]...],
    "accuracy": {feature set: {attribute: [one per cell]}}, "mean": {feature set: {attribute: mean}}}``. With the
    world's ``tokenizer``, ``accuracy`` and ``mean`` also hold ``"read"``: :func:`read_cells` on the same scenes."""
    sampled = sample_scenes(seed, "probe", scenes)
    features = image_features(model, sampled)
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    accuracy: dict[str, dict[str, list[float]]] = {name: {} for name in features}
    label_sets = [cell_labels(sampled, attribute, r, c) for attribute in ATTRIBUTES for r, c in cells]
    scored = [[label != EMPTY for label in labels] for labels in label_sets]
    for name, values in features.items():
        found = ridge_probes(values, label_sets, ridge=ridge, scored=scored)
        for i, attribute in enumerate(ATTRIBUTES):
            accuracy[name][attribute] = found[i * len(cells) : (i + 1) * len(cells)]
    if tokenizer is not None:
        accuracy["read"] = read_cells(model, tokenizer, sampled)
    return {
        "scenes": scenes,
        "features": {name: list(values.shape[1:]) for name, values in features.items()},
        "cells": [list(cell) for cell in cells],
        "accuracy": accuracy,
        "mean": {name: {a: sum(v) / len(v) for a, v in by.items()} for name, by in accuracy.items()},
    }


def value_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The one token of each colour and shape word as the grid caption writes it (after a space)."""
    ids = {}
    for word in (*SHAPES, *COLOURS):
        tokens = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(
                f"the tokenizer splits {word!r} into {len(tokens)} tokens {tokens}; reading cells needs one token per "
                "colour and shape word, as the world's tokenizer (mmgpt world generate OUT writes OUT/tokenizer) has"
            )
        ids[word] = tokens[0]
    return ids


@torch.no_grad()
def read_cells(
    model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase, scenes: Sequence[Scene], *, batch_size: int = 64
) -> dict[str, list[float]]:
    """``{attribute: [accuracy per cell, reading order]}``: how often the model, reading a scene's grid caption up to
    a shape's colour or kind word, scores the true value above the attribute's other values (teacher forcing; the
    cells without a shape are not counted). Needs the world's tokenizer (one token per value word)."""
    value_ids = value_token_ids(tokenizer)
    choices = {a: torch.tensor([value_ids[v] for v in VALUES[a]]) for a in ATTRIBUTES}
    transform = model.image_transform()
    cells = list(POSITIONS)
    hits = {a: [0] * len(cells) for a in ATTRIBUTES}
    counts = [0] * len(cells)
    image_ids = list(model.image_placeholders())
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start : start + batch_size]
        samples = []
        for scene in batch:
            caption = tokenizer(grid_caption(scene)).input_ids
            bos = caption[:1] if caption and caption[0] == tokenizer.bos_token_id else []
            ids = bos + image_ids + caption[len(bos) :]
            samples.append(TokenizedSample(ids, ids, [transform(render_scene(scene))]))
        padded = collate(samples, model.special.pad)
        padded = padded.to(model.device)
        logits = model(padded.input_ids, images=padded.media, attention_mask=padded.attention_mask).logits.float().cpu()
        for row, (scene, sample) in enumerate(zip(batch, samples, strict=True)):
            where = _value_positions(scene, sample.input_ids, value_ids)
            for (cell, attribute), position in where.items():
                scores = logits[row, position - 1, choices[attribute]]  # the logits before the word predict it
                truth = getattr(scene.at(POSITIONS[cell]), attribute)
                hits[attribute][cells.index(cell)] += VALUES[attribute][int(scores.argmax())] == truth
            for cell in cells:
                counts[cells.index(cell)] += scene.at(POSITIONS[cell]) is not None
    return {a: [h / c if c else float("nan") for h, c in zip(hits[a], counts, strict=True)] for a in ATTRIBUTES}


def _value_positions(scene: Scene, input_ids: list[int], value_ids: dict[str, int]) -> dict[tuple, int]:
    """Token index of each shape's kind and colour word in its grid caption: the n-th value word of an attribute
    is the n-th shape's, in reading order (the caption names the cells in that order)."""
    found: dict[tuple, int] = {}
    for attribute in ATTRIBUTES:
        ids = {value_ids[v] for v in VALUES[attribute]}
        positions = [i for i, token in enumerate(input_ids) if token in ids]
        shapes = scene.shapes  # reading order
        if len(positions) != len(shapes):
            raise ValueError(f"scene {scene.id}: {len(positions)} {attribute} words for {len(shapes)} shapes")
        for shape, position in zip(shapes, positions, strict=True):
            found[((shape.row, shape.column), attribute)] = position
    return found
