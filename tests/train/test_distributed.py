"""The process group torchrun's environment asks for: which backends, on which device (no GPU needed)."""

from __future__ import annotations

import torch

from mmgpt.train import distributed
from mmgpt.train.distributed import init_distributed


def joined(monkeypatch, env: dict[str, str], device: str) -> tuple[distributed.DistributedContext, list]:
    calls: list = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(("init", kw["backend"])))
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    return init_distributed(env, device=device), calls


def test_a_cuda_rank_reduces_cuda_tensors_with_nccl_and_its_cpu_metric_sums_with_gloo(monkeypatch):
    # The trainer keeps its per-step sums (losses, samples, tokens) on the CPU; NCCL alone cannot reduce those.
    ctx, calls = joined(monkeypatch, {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "cuda:1")
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "cpu:gloo,cuda:nccl")]
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.device) == (1, 1, 2, torch.device("cuda", 1))


def test_a_cpu_rank_uses_gloo(monkeypatch):
    ctx, calls = joined(monkeypatch, {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "cpu")
    assert calls == [("init", "gloo")]
    assert ctx.enabled and ctx.is_main and ctx.device == torch.device("cpu")


def test_alone_joins_no_group(monkeypatch):
    ctx, calls = joined(monkeypatch, {}, "cpu")
    assert calls == [] and not ctx.enabled
