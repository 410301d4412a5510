"""Training checkpoints: the trained weights plus everything needed to continue exactly where a run stopped.

Layout of ``RUN_DIR/checkpoints/step-00000100/``:

- ``adapter/`` - the LoRA adapter in peft's format (adapter_config.json + adapter_model.safetensors), when
  ``trainable: lora``, with ``trained_parts.safetensors`` when ``train_groups`` trained parts in full beside the
  adapters (e.g. mPLUG-Owl's abstractor); otherwise ``trainable.safetensors`` - every trained parameter by name;
- ``trainer_state.pt`` - optimiser, scheduler, grad scaler, the optimiser step, and per rank the data position
  and RNG states (python, torch CPU, CUDA). Tensors, numbers and strings only: read with ``weights_only=True``.

A checkpoint is written into ``.tmp-step-...`` and renamed into place, so a run killed while saving leaves
the previous checkpoints intact and no half-written one that looks complete. ``keep_last`` prunes old ones;
``best/`` (the best validation metric so far) is never pruned.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmgpt.model.contract import VisionLanguageModel
from mmgpt.model.lora import (
    ADAPTER_WEIGHTS_FILE,
    TRAINED_PARTS_FILE,
    is_lora_name,
    read_adapter,
    save_adapter,
    set_lora_state,
)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"
TRAINABLE_FILE = "trainable.safetensors"
BEST = "best"
_STEP_DIR = re.compile(r"step-(\d{8})")


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted saves are ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trained_state(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def write_weights(model: VisionLanguageModel, folder: Path, *, lora: bool) -> None:
    """LoRA runs: ``adapter/`` (with the parts ``train_groups`` trained in full beside the adapters, if any);
    other runs: ``trainable.safetensors``, every trained parameter by name."""
    state = trained_state(model)
    if lora:
        save_adapter(model, folder / ADAPTER_DIR, parts={n: t for n, t in state.items() if not is_lora_name(n)})
    else:
        save_file(state, str(folder / TRAINABLE_FILE), metadata={"format": "mmgpt-trainable"})


def read_weights(model: VisionLanguageModel, folder: Path, *, lora: bool) -> None:
    """Load a checkpoint's trained weights into ``model`` (whose trainable set is already in place)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and not (lora and is_lora_name(n))}
    if lora:
        _, state = read_adapter(folder / ADAPTER_DIR)
        set_lora_state(model, state, source=str(folder / ADAPTER_DIR / ADAPTER_WEIGHTS_FILE))
        parts = folder / ADAPTER_DIR / TRAINED_PARTS_FILE
        if not params and not parts.is_file():
            return
        file = parts
    else:
        file = folder / TRAINABLE_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{folder} has no {file.name}, but this run trains {len(params)} parameters that are no LoRA adapters "
            f"(e.g. {sorted(params)[:3]}); resume with the trainable set and train_groups the run was started with"
        )
    state = load_file(str(file))
    if state.keys() != params.keys():
        raise ValueError(
            f"{file} holds other parameters than this run trains: missing "
            f"{sorted(params.keys() - state.keys())[:8]}, unexpected {sorted(state.keys() - params.keys())[:8]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


@dataclass
class TrainerState:
    """What resumes a run; ``ranks[r]`` holds rank r's data position and RNG states."""

    step: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    ranks: list[dict[str, Any]]
    metrics: dict[str, float]
    best: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def save_checkpoint(
    run_dir: str | Path, model: VisionLanguageModel, state: TrainerState, *, lora: bool, keep_last: int
) -> Path:
    """Write checkpoint ``state.step`` atomically and prune all but the newest ``keep_last``."""
    final = step_dir(run_dir, state.step)
    tmp = final.with_name(".tmp-" + final.name)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_weights(model, tmp, lora=lora)
    torch.save(state.to_dict(), tmp / STATE_FILE)
    if final.exists():  # the same step saved again (e.g. a resumed run that ends where it was saved)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[: -max(1, keep_last)]:
        shutil.rmtree(old)
    return final


def load_trainer_state(folder: str | Path) -> TrainerState:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint: {STATE_FILE} is missing")
    return TrainerState(**torch.load(path, map_location="cpu", weights_only=True))


def keep_best(run_dir: str | Path, checkpoint: Path) -> Path:
    """Copy ``checkpoint`` to ``RUN_DIR/best`` (replacing the previous best atomically)."""
    best = Path(run_dir) / BEST
    tmp = best.with_name(".tmp-best")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(checkpoint, tmp)
    old = best.with_name(".old-best")
    if best.exists():
        best.rename(old)
    tmp.rename(best)
    if old.exists():
        shutil.rmtree(old)
    return best
