"""Ranking by log-likelihood: how likely the model finds each candidate continuation of a prompt, for any model of
the contract - classification (HatefulMemes, ImageNet), multiple choice (A-OKVQA) and MMLU.

As OpenFlamingo's ``get_rank_classifications``: the prompt (with its images) runs once, its KV cache is kept, and
each candidate's tokens run on a copy of it; a candidate's score is the mean log-probability of its tokens
(``normalize="mean"``, OpenFlamingo's ``normalize_length=True``) or their sum (``"sum"``). The first token's
log-probability comes from the prompt's last position, so a one-token candidate (an MMLU letter) costs no extra
forward. Candidates of one batch are right-padded: padding comes after every real token, which the causal mask
keeps from influencing them.

Legend: b prompts in a batch, n candidate rows, L longest candidate, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mmgpt.generate import run_prompts
from mmgpt.model.contract import VisionLanguageModel

NORMALIZATIONS = ("mean", "sum")
DEFAULT_BATCH_SIZE = 16
CANDIDATE_ROWS = 64  # candidate rows run together on copies of the prompts' cache


@dataclass(frozen=True)
class RankRequest:
    """A prompt (ids, images [m, 3, H, W] or None) and its candidates' token ids (each non-empty)."""

    input_ids: list[int]
    images: torch.Tensor | None
    candidates: tuple[tuple[int, ...], ...]


@torch.no_grad()
def _rank_batch(
    model: VisionLanguageModel, batch: Sequence[RankRequest], normalize: str, candidate_rows: int
) -> list[list[float]]:
    device = model.device
    out, _ = run_prompts(model, [r.input_ids for r in batch], [r.images for r in batch])
    first = out.logits[:, -1].float().log_softmax(dim=-1)  # [b, V]
    token_scores: list[list[list[float]]] = [
        [[float(first[row, c[0]])] for c in request.candidates] for row, request in enumerate(batch)
    ]
    longer = [(row, k) for row, r in enumerate(batch) for k, c in enumerate(r.candidates) if len(c) > 1]
    for start in range(0, len(longer), candidate_rows):
        chunk = longer[start : start + candidate_rows]
        fed = [batch[row].candidates[k][:-1] for row, k in chunk]  # each token predicts the next one
        width = max(len(f) for f in fed)
        ids = torch.full((len(chunk), width), model.special.pad, dtype=torch.long)
        chunk_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, tokens in enumerate(fed):
            ids[j, : len(tokens)] = torch.tensor(tokens)
            chunk_mask[j, : len(tokens)] = 1
        rows = torch.tensor([row for row, _ in chunk], device=device)
        cont = model(ids.to(device), attention_mask=chunk_mask.to(device), cache=out.cache.select(rows), use_cache=True)
        logp = cont.logits.float().log_softmax(dim=-1)  # [n, L, V]
        for j, (row, k) in enumerate(chunk):
            wanted = batch[row].candidates[k][1:]
            picked = logp[j, torch.arange(len(wanted)), torch.tensor(wanted, device=device)]
            token_scores[row][k].extend(float(x) for x in picked)
    reduce = (lambda xs: sum(xs) / len(xs)) if normalize == "mean" else sum
    return [[float(reduce(scores)) for scores in per_candidate] for per_candidate in token_scores]


def rank_candidates(
    model: VisionLanguageModel,
    requests: Sequence[RankRequest],
    *,
    normalize: str = "mean",
    batch_size: int = DEFAULT_BATCH_SIZE,
    candidate_rows: int = CANDIDATE_ROWS,
    on_progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Each request's candidate scores (mean or summed token log-probabilities), in request order."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
    for i, request in enumerate(requests):
        if not request.candidates or any(len(c) == 0 for c in request.candidates):
            raise ValueError(f"request {i} has no candidates or an empty one; every candidate needs a token")
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].input_ids))
    scores: list[list[float]] = [[] for _ in requests]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            results = _rank_batch(model, [requests[i] for i in chunk], normalize, candidate_rows)
            for i, result in zip(chunk, results, strict=True):
                scores[i] = result
            if on_progress is not None:
                on_progress(len(chunk))
    finally:
        model.train(was_training)
    return scores


def softmax(scores: Sequence[float]) -> list[float]:
    """The candidates' scores as probabilities (OpenFlamingo: exp(score - logsumexp(scores)))."""
    values = torch.tensor(list(scores), dtype=torch.float64).softmax(dim=0)
    return [float(v) for v in values]
