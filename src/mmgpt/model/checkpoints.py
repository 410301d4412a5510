"""Our own model format: one self-contained directory that ``load_pretrained`` (and every CLI verb) accepts.

Layout::

    mmgpt.yaml          ModelConfig (LM and ViT architectures as numbers, media mask, fusion, dtype)
    model.safetensors   the whole Flamingo state dict, with the LM's own key names
    tokenizer/          the tokenizer, special tokens included

The media-mask behaviour and the language-only bypass are part of mmgpt.yaml, so a model is always served with
the behaviour it was trained with.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mmgpt.config import ModelConfig, VisionConfig, load_yaml, save_yaml
from mmgpt.model.build import build_model
from mmgpt.model.flamingo import Flamingo

CONFIG_FILE = "mmgpt.yaml"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
# HF config entries that describe a file, not an architecture.
_NOT_ARCHITECTURE = {"_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype"}


def describe(model: Flamingo) -> ModelConfig:
    """The model's config with both backbones given as numbers, so it rebuilds without the original paths."""
    vit = model.vision_encoder.model.config
    vision = VisionConfig(
        image_size=vit.image_size,
        patch_size=vit.patch_size,
        width=vit.hidden_size,
        layers=vit.num_hidden_layers,
        heads=vit.num_attention_heads,
        mlp_dim=vit.intermediate_size,
    )
    hf = {k: v for k, v in model.lang_encoder.config.to_dict().items() if k not in _NOT_ARCHITECTURE}
    lm = dataclasses.replace(
        model.config.lm,
        path=None,
        hf_config=hf,
        tokenizer=TOKENIZER_DIR,
        decoder_layers_path=model.decoder_layers_path,
    )
    return dataclasses.replace(model.config, vision=vision, lm=lm)


def save_pretrained(model: Flamingo, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_yaml(describe(model), path / CONFIG_FILE)
    tokenizer.save_pretrained(path / TOKENIZER_DIR)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # Tied LMs share embedding storage; safetensors refuses shared tensors, and loading re-ties them.
    seen: dict[int, str] = {}
    for key in list(state):
        ptr = state[key].data_ptr()
        if ptr in seen:
            del state[key]
        else:
            seen[ptr] = key
    save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "mmgpt"})
    return path


def load_pretrained(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[Flamingo, PreTrainedTokenizerBase]:
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not an mmgpt model directory (no {CONFIG_FILE}); save one with "
            "mmgpt.model.checkpoints.save_pretrained"
        )
    cfg = load_yaml(ModelConfig, path / CONFIG_FILE)
    tokenizer = AutoTokenizer.from_pretrained(path / TOKENIZER_DIR)
    model, tokenizer = build_model(cfg, tokenizer=tokenizer)
    state = load_file(str(path / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if _is_tied_copy(model, k, state)}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{path / WEIGHTS_FILE} does not match the model of {CONFIG_FILE}: missing keys "
            f"{missing[:10]}, unexpected keys {unexpected[:10]}"
        )
    return model.to(device).eval(), tokenizer


def _is_tied_copy(model: Flamingo, key: str, state: dict[str, torch.Tensor]) -> bool:
    """True when ``key`` shares storage with a saved parameter (e.g. a tied lm_head)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(key)
    if target is None:
        return False
    return any(p is target for k, p in params.items() if k != key and k in state)
