"""The language-modelling loss: the one place labels are shifted.

labels[b,T] are aligned with input_ids (IGNORE_INDEX outside the trained tokens, see data/tokenize.py);
position t's logits predict token t+1, so logits[:, :-1] are scored against labels[:, 1:].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmgpt.tokens import IGNORE_INDEX


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the trained tokens of the batch (logits [b,T,V], labels [b,T]); computed in fp32.

    A batch without a single trained token has no loss; it is an error rather than a silent NaN (the data
    pipeline drops such samples, so reaching this is a bug upstream).
    """
    targets = labels[:, 1:]
    if not bool((targets != IGNORE_INDEX).any()):
        raise ValueError("the batch has no trained token (every label is IGNORE_INDEX after shifting)")
    scores = logits[:, :-1].float()
    return F.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
