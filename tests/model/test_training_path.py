"""Gradients reach what trains and nothing else; gradient checkpointing of the gated blocks is exact."""

import torch

from tests.model.conftest import random_images, tiny_model


def openflamingo_trainable(model):
    """What OpenFlamingo pretraining trains (the model's "openflamingo" preset), unfrozen; returns it."""
    params = [p for _, p in model.group_parameters(model.trainable_groups("openflamingo"))]
    for p in params:
        p.requires_grad_(True)
    return params


def loss_of(model, tokenizer):
    ids = torch.tensor([tokenizer("<image>a red circle<|endofchunk|><image>a blue square").input_ids])
    logits = model(ids, images=random_images(2)[None]).logits
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])


def test_gradients_flow_to_perceiver_blocks_and_embeddings_only():
    model, tokenizer = tiny_model("llama")
    model.train()
    trainable = openflamingo_trainable(model)
    loss_of(model, tokenizer).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    names = {n for n, p in model.named_parameters() if any(p is t for t in trainable)}
    assert with_grad == names
    assert any(n.startswith("perceiver.") for n in with_grad)
    assert all(p.grad is None for p in model.vision_encoder.parameters())


def test_checkpointed_blocks_give_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, tokenizer = tiny_model("llama")
        model.train()
        model.gradient_checkpointing = checkpointing
        openflamingo_trainable(model)
        loss_of(model, tokenizer).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-6)
