"""Log-likelihood ranking through the contract: the cached path (prompt once, candidates on copies of its cache)
equals recomputing every prompt + candidate sequence from scratch, for a Flamingo and a prefix model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmgpt.evaluate.likelihood import RankRequest, rank_candidates, softmax
from tests.model.conftest import random_images, tiny_model
from tests.toy_prefix import make_tokenizer, make_toy


def recomputed(model, request: RankRequest, candidate: tuple[int, ...], normalize: str) -> float:
    sequence = torch.tensor([request.input_ids + list(candidate)])
    with torch.no_grad():
        logp = model(sequence, images=request.images[None]).logits[0].float().log_softmax(-1)
    start = len(request.input_ids) - 1
    values = [float(logp[start + i, token]) for i, token in enumerate(candidate)]
    return sum(values) / len(values) if normalize == "mean" else sum(values)


def flamingo():
    return tiny_model()[0]


def toy():
    return make_toy(make_tokenizer())


@pytest.mark.parametrize("make", [flamingo, toy], ids=["flamingo", "prefix"])
@pytest.mark.parametrize("normalize", ["mean", "sum"])
def test_cached_ranking_equals_recomputation(make, normalize):
    model = make()
    image = list(model.image_placeholders())
    pixels = [F.interpolate(random_images(1, seed), size=model.image_transform().size) for seed in (0, 1)]
    requests = [
        RankRequest([1, *image, 5, 6, 7], pixels[0], ((8,), (9, 10, 11), (12, 13))),
        RankRequest([1, *image, 5, 6, 7, 20, 21, 22, 23], pixels[1], ((14, 15, 16, 17), (8,))),
    ]
    got = rank_candidates(model, requests, normalize=normalize, batch_size=2, candidate_rows=3)
    want = [[recomputed(model, r, c, normalize) for c in r.candidates] for r in requests]
    for row, expected in zip(got, want, strict=True):
        assert row == pytest.approx(expected, abs=1e-4)


def test_softmax_and_errors():
    assert softmax([math.log(1), math.log(3)]) == pytest.approx([0.25, 0.75])
    model = toy()
    with pytest.raises(ValueError, match="normalize='max'; choose one of mean, sum"):
        rank_candidates(model, [], normalize="max")
    with pytest.raises(ValueError, match="request 0 has no candidates or an empty one"):
        rank_candidates(model, [RankRequest([1, 2], None, ((3,), ()))])
