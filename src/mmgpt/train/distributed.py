"""Distributed training: the process group from torchrun's environment, DDP wrapping, reductions.

The same `mmgpt train` runs alone or under ``torchrun --nproc-per-node N``. Every rank builds the same model
with the same seed (so fresh LoRA weights agree), reads its own shard of the data, and DDP averages the
gradients; during gradient accumulation only the last micro-step synchronises (``no_sync``).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(env: Mapping[str, str], *, device: str = "auto") -> DistributedContext:
    """Join the process group torchrun describes in ``env`` (RANK, WORLD_SIZE, LOCAL_RANK); alone otherwise.

    NCCL for CUDA tensors, gloo for CPU ones (a CUDA run reduces its metric sums, kept on the CPU, through gloo).
    """
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank, local_rank = int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        backend = "cpu:gloo,cuda:nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen)


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group; call it once the run's DDP wrapper is unreachable. Its reducer holds the group too,
    and a reducer freed after ``destroy_process_group`` frees the group's last reference with the GIL held: gloo's
    destructor then joins its worker threads while one of them waits for the GIL to free a finished collective's
    tensors - a deadlock (seen in about 1 run of 4 of the two-rank test). The group's own Python object releases the GIL
    when it goes, so it must go last."""
    if ctx.enabled and dist.is_initialized():
        gc.collect()  # a wrapper left in a reference cycle goes now, while the group still holds its own reference
        dist.destroy_process_group()


def wrap_model(model: nn.Module, ctx: DistributedContext) -> nn.Module:
    """DDP around ``model``; the model itself when alone. (Sharding the frozen base - FSDP - is not supported:
    with LoRA only the adapter's gradients and optimiser state are per-GPU costs, and the bf16 base of
    MultiModal-GPT, 16.4 GB, fits one 24 GB+ GPU.)"""
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on accumulation micro-steps (all but the last of an optimiser step)."""
    if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_sum(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(obj: object, ctx: DistributedContext) -> list[object]:
    """Every rank's ``obj`` (on every rank), in rank order."""
    if not ctx.enabled:
        return [obj]
    gathered: list[object] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()
