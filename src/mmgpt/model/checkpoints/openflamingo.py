"""OpenFlamingo v1/v2 ``checkpoint.pt`` (perceiver, gated blocks and embeddings, by an explicit key map), and the
OpenFlamingo / MultiModal-GPT release assembled from its downloads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.model.build import build_model
from mmgpt.model.checkpoints.keys import (
    STRAY_BUFFER,
    LoadReport,
    check_lm_matches,
    local_file,
    map_keys,
    read_state_dict,
)
from mmgpt.model.flamingo import Flamingo
from mmgpt.model.fusion.gated_blocks import BLOCK_NAME
from mmgpt.model.language import hf_source

if TYPE_CHECKING:
    from mmgpt.load import ModelPreset

# ---------------------------------------------------------------------------------------------------------------
# OpenFlamingo and MultiModal-GPT checkpoints (reference.md section 3): explicit key maps, strict checks.
#
# OpenFlamingo wraps every decoder layer as FlamingoLayer(gated_cross_attn_layer, decoder_layer), and registers
# the blocks a second time as ``lang_encoder.gated_cross_attn_layers.{N}`` (v1; N = the layer index) and v2 the
# original layers as ``lang_encoder.old_decoder_blocks.{N}``. Our model has the LM's own layout with the block as a
# child of the layer, so the map is:
#   gated_cross_attn_layers.{N}.X        -> {layers}.{N}.gated_cross_attn_layer.X   (alias; must equal the other)
#   {layers}.{N}.decoder_layer.X         -> {layers}.{N}.X
#   old_decoder_blocks.{N}.X             -> {layers}.{N}.X
# Training files add ``module.`` (DDP) and ``{"model_state_dict": ...}``; MultiModal-GPT's LoRA keys sit under
# ``lang_encoder.base_model.model.`` (peft's wrapper) and name adapters ``lora_A.weight`` or ``lora_A.default.weight``.


def lm_key(key: str, *, layers_path: str) -> str:
    """An OpenFlamingo key inside the LM (``gated_cross_attn_layers.7.ff.1.weight``) -> ours (LM-relative)."""
    layers = re.escape(layers_path)
    key = re.sub(r"^gated_cross_attn_layers\.(\d+)\.", rf"{layers_path}.\1.{BLOCK_NAME}.", key)
    key = re.sub(r"^old_decoder_blocks\.(\d+)\.", rf"{layers_path}.\1.", key)
    return re.sub(rf"^({layers}\.\d+)\.decoder_layer\.", r"\1.", key)


def load_openflamingo_checkpoint(model: Flamingo, path: str | Path) -> LoadReport:
    """Load an OpenFlamingo v1/v2 ``checkpoint.pt`` (perceiver, gated blocks, embeddings) into ``model``.

    Every perceiver and gated-block parameter and the input embeddings must be in the file; other LM parameters
    (output embeddings, full LM weights, e.g. v2's ``old_decoder_blocks`` copies) are loaded when present; stray
    buffers and the frozen ViT's open_clip weights (``vision_encoder.*``: the ViT comes from the CLIP directory)
    are ignored and reported; any other key, and any shape that differs, is an error that lists them.
    """
    source = str(path)
    layers_path = model.decoder_layers_path

    params = dict(model.named_parameters(remove_duplicate=False))
    # GPT-NeoX's output embeddings were ``embed_out`` in the transformers OpenFlamingo v2 used.
    renamed = {"lang_encoder.embed_out.weight": _output_embedding_key(model)}

    def mapper(key: str) -> str | None:
        if key.startswith("vision_encoder."):  # open_clip names of the frozen ViT (full training dicts): not ours
            return None
        if key in renamed and key not in params and renamed[key] is not None:
            return renamed[key]
        if key.startswith("lang_encoder."):
            return "lang_encoder." + lm_key(key[len("lang_encoder.") :], layers_path=layers_path)
        return key

    mapped, origin, vision, aliases = map_keys(read_state_dict(path), mapper, source)
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
    required = {f"perceiver.{n}" for n, _ in model.perceiver.named_parameters()}
    for i, block in model.gated_blocks().items():
        required |= {f"lang_encoder.{layers_path}.{i}.{BLOCK_NAME}.{n}" for n, _ in block.named_parameters()}
    embedding = model.input_embedding_name()
    required.add(embedding)

    ignored = [k for k in mapped if k not in params and (k in buffers or STRAY_BUFFER.search(k))]
    unexpected = sorted(k for k in mapped if k not in params and k not in ignored)
    missing = sorted(required - set(mapped))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit this model: {len(missing)} missing keys {missing[:8]}, {len(unexpected)} "
            f"unexpected keys {unexpected[:8]} (after mapping OpenFlamingo names to ours). Check that the model "
            "config matches the checkpoint (LM family and layers, cross_attention.every_n_layers, perceiver depth)"
        )
    _check_shapes(mapped, params, embedding=embedding, source=source)
    loaded = sorted(k for k in mapped if k in params)
    with torch.no_grad():
        for key in loaded:
            params[key].copy_(mapped[key])
    ignored_keys = sorted(origin[k] for k in ignored) + sorted(aliases) + sorted(vision)
    return LoadReport(source=source, loaded=loaded, ignored=ignored_keys)


def _output_embedding_key(model: Flamingo) -> str | None:
    out = model.lang_encoder.get_output_embeddings()
    if out is None:
        return None
    return next(
        f"lang_encoder.{n}" for n, p in model.lang_encoder.named_parameters(remove_duplicate=False) if p is out.weight
    )


def _check_shapes(
    mapped: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], *, embedding: str, source: str
) -> None:
    emb = mapped.get(embedding)
    if emb is not None and emb.shape[0] != params[embedding].shape[0]:
        raise ValueError(
            f"{source}: the checkpoint's vocabulary has {emb.shape[0]} tokens but the model's has "
            f"{params[embedding].shape[0]}; the tokenizer must be the LM's own plus the special tokens "
            "(<|endofchunk|>, <image>, <PAD> when missing) - e.g. 32000 + 3 = 32003 for LLaMA-7B"
        )
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(params[k].shape)}"
        for k, v in mapped.items()
        if k in params and v.shape != params[k].shape
    ]
    if wrong:
        raise ValueError(f"{source}: {len(wrong)} tensors have the wrong shape: {wrong[:8]}; check the model config")


def load_openflamingo_release(
    preset: ModelPreset,
    files: dict[str, str | Path | None],
    *,
    tokenizer: str | Path | None,
    dtype: str | None,
    device: str | torch.device,
    device_map: str | dict | None,
) -> tuple[Flamingo, PreTrainedTokenizerBase]:
    """OpenFlamingo / MultiModal-GPT from its downloads: ``lm`` (the LM's HF directory), ``clip`` (a HF CLIP
    directory) and ``checkpoint`` (OpenFlamingo's ``checkpoint.pt``: perceiver, gated blocks, embeddings); the
    adapter (``lora``) is loaded by the caller."""
    cfg = preset.model
    lm, clip, checkpoint, lora = (files.get(k) for k in ("lm", "clip", "checkpoint", "lora"))
    needed = {
        "lm": (lm, "the language model's HF directory (for MultiModal-GPT: the LLaMA-7B HF conversion)"),
        "clip": (clip, "a HF CLIP directory (openai/clip-vit-large-patch14)"),
        "checkpoint": (checkpoint, "OpenFlamingo's checkpoint.pt (perceiver, gated blocks, embeddings)"),
    }
    if preset.lora is not None:  # the model is the base plus this adapter
        needed["lora"] = (lora, "MultiModal-GPT's mmgpt_lora_v0_with_demo.pt, or a peft adapter directory")
    missing = [f"{name}= ({what})" for name, (value, what) in needed.items() if value is None]
    if missing:
        raise ValueError(f"preset {preset.name!r} needs {'; '.join(missing)}. See docs/weights.md for the downloads")
    # Every input is checked before anything large is read.
    hf_source(lm, what="language model", key="lm=")
    hf_source(clip, what="vision encoder", key="clip=")
    checkpoint = local_file(checkpoint, what="checkpoint")
    cfg = dataclasses.replace(
        cfg,
        lm=dataclasses.replace(cfg.lm, path=str(lm), tokenizer=str(tokenizer) if tokenizer else None),
        vision=dataclasses.replace(cfg.vision, path=str(clip)),
        dtype=dtype or cfg.dtype,
    )
    check_lm_matches(preset.model, preset.name, str(lm))
    model, tok = build_model(cfg, device=device, device_map=device_map, init_weights=False)
    if model.vision_encoder.width != preset.model.vision.width:
        raise ValueError(
            f"{clip}: the vision encoder is {model.vision_encoder.width} wide but preset {preset.name!r} expects "
            f"{preset.model.vision.width} (CLIP ViT-L/14); point clip= at openai/clip-vit-large-patch14"
        )
    load_openflamingo_checkpoint(model, checkpoint)  # fills the perceiver and the blocks, which are uninitialised
    return model, tok
