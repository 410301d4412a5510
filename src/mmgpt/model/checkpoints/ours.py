"""Our own model format: one self-contained directory that ``load_pretrained`` (and every CLI verb) accepts.

Layout::

    mmgpt.yaml          ModelConfig (model kind, LM and ViT architectures as numbers, media mask, prompt style)
    model.safetensors   the whole state dict, the LM under its own key names
    tokenizer/          the tokenizer, special tokens included

The media-mask behaviour and the language-only bypass are part of mmgpt.yaml, so a model is always served with
the behaviour it was trained with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.config import ModelConfig, load_yaml, save_yaml
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints.torch_files import read_safetensors_into, safetensors_header, write_safetensors
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.model.lora import has_lora
from mmgpt.model.quantize import is_quantized
from mmgpt.tokens import read_tokenizer

CONFIG_FILE = "mmgpt.yaml"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def save_pretrained(model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Write ``model`` as one self-contained directory (see the module docstring); LoRA must be merged first."""
    if is_quantized(model):
        raise ValueError(
            "the model is quantized: it cannot be saved whole (load it without quantize= to save it, or save an "
            "adapter with mmgpt.model.lora.save_adapter)"
        )
    if has_lora(model):
        raise ValueError(
            "the model has unmerged LoRA adapters; fold them in with mmgpt.model.lora.merge_lora(model) first (or save "
            "the adapter on its own with mmgpt.model.lora.save_adapter)"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_yaml(model.describe(), path / CONFIG_FILE)
    tokenizer.save_pretrained(path / TOKENIZER_DIR)
    state = model.state_dict()
    # Tied LMs share embedding storage; safetensors refuses shared tensors, and loading re-ties them.
    seen: set[int] = set()
    for key in list(state):
        ptr = state[key].data_ptr()
        if ptr in seen:
            del state[key]
        else:
            seen.add(ptr)
    write_safetensors(state, path / WEIGHTS_FILE, metadata={"format": "mmgpt"})
    return path


def load_pretrained(
    path: str | Path,
    *,
    dtype: str | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """Load a directory written by :func:`save_pretrained`.

    The model is allocated without initialising it (directly in ``dtype``, default the saved one, on ``device``)
    and every weight is read from ``model.safetensors`` one tensor at a time, so memory holds one copy of the model
    plus one tensor. ``device_map`` (multi-GPU, needs accelerate): loaded on the CPU, then dispatched.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not an mmgpt model directory (no {CONFIG_FILE}); save one with "
            "mmgpt.model.checkpoints.save_pretrained or `mmgpt export`"
        )
    cfg = load_yaml(ModelConfig, path / CONFIG_FILE)
    if dtype is not None:
        cfg = dataclasses.replace(cfg, dtype=dtype)
    tokenizer = read_tokenizer(path / TOKENIZER_DIR)
    build_device = "cpu" if device_map is not None else device
    model, tokenizer = build_model(cfg, tokenizer=tokenizer, device=build_device, init_weights=False)
    load_weights(model, path / WEIGHTS_FILE)
    if device_map is not None:
        dispatch(model, device_map)
    return model.eval(), tokenizer


def load_weights(model: VisionLanguageModel, file: str | Path) -> None:
    """Fill every parameter and persistent buffer of ``model`` from our safetensors file; strict, shape-checked."""
    if not Path(file).is_file():
        raise FileNotFoundError(f"{file} does not exist; an mmgpt model directory holds its weights there")
    targets = model.state_dict(keep_vars=True)
    header, _ = safetensors_header(file)
    stored = {id(targets[k]) for k in header if k in targets}
    # A key absent from the file is fine only if it is the same tensor as a stored one (a tied lm_head).
    missing = sorted(k for k in targets if k not in header and id(targets[k]) not in stored)
    unexpected = sorted(k for k in header if k not in targets)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not match the model of {CONFIG_FILE}: {len(missing)} missing keys {missing[:10]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:10]}"
        )
    read_safetensors_into(file, targets, keys=list(header))


def dispatch(model: VisionLanguageModel, device_map: str | dict) -> None:
    """Spread the LM over GPUs with accelerate; what hangs on its layers (Flamingo's gated blocks) follows them,
    the parts outside it (vision encoder, resampler, connector) go beside its input embeddings."""
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError:
        raise ImportError("device_map needs accelerate: pip install accelerate") from None
    lm = model.language_model
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(lm, no_split_module_classes=lm._no_split_modules or [])
    dispatch_model(lm, device_map=device_map)
    first = next(lm.get_input_embeddings().parameters()).device
    for name in model.part_groups():
        model.get_submodule(name).to(first)
