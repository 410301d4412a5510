"""mPLUG-Owl assembled from its downloads (``mmgpt.load``'s ``mplug_owl`` release), and users' LoRA adapters.

Two ways in:

- ``checkpoint=DIR``: one of the HF release directories (``MAGAer13/mplug-owl-llama-7b-pt``, ``-llama-7b``,
  ``-llama-7b-ft``; ``mmgpt.load(DIR)`` recognises them by config.json's ``model_type "mplug-owl"``). Every number
  comes from that config.json (the preset gives the style: CLS kept, post_layernorm on all tokens, squash resize,
  the prompt style); the weights from its shards (``mplug_owl.read_mplug_owl_weights``: strict, every unknown key
  listed, the stored ``inv_freq`` buffers named and skipped); the tokenizer from its ``tokenizer.model``.
- ``lm=LLAMA_DIR, clip=CLIP_DIR``: stage 1 from scratch, as the paper starts it - LLaMA and a CLIP ViT from their
  own HF directories, a fresh abstractor (its width the ViT's) and connector.

Memory: the model is allocated once, uninitialised, in its dtype on its device; the shards are memory-mapped and
each part's tensors are copied in (converted on the way), so the process holds one copy of the model - a 7B model
takes about 14 GB (bf16), not 28 - plus the mapped shards' file pages while it loads (page cache the kernel can
drop; tests/model/test_mplug_owl.py measures the anonymous memory).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import CLIPVisionConfig, GenerationConfig, PreTrainedTokenizerBase

from mmgpt.config import LoraConfig, ModelConfig
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints.keys import LoadReport
from mmgpt.model.checkpoints.mplug_owl import (
    ADAPTER_FILES,
    HINT,
    WEIGHT_FILES,
    MplugOwlNumbers,
    MplugOwlState,
    read_mplug_owl_config,
    read_mplug_owl_lora,
    read_mplug_owl_weights,
)
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.model.language import hf_source, lm_modules
from mmgpt.model.lora import apply_lora, has_lora, set_lora_state

if TYPE_CHECKING:
    from mmgpt.load import ModelPreset

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# text_config entries that are no architecture: file bookkeeping and generation settings (4.28 saved both).
_TOKEN_IDS = {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache"}
_NOT_ARCHITECTURE = {"_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype"}
_NOT_ARCHITECTURE |= set(GenerationConfig().to_dict()) - _TOKEN_IDS


def load_mplug_owl_release(
    preset: ModelPreset,
    files: dict[str, str | Path | None],
    *,
    tokenizer: str | Path | None,
    dtype: str | None,
    device: str | torch.device,
    device_map: str | dict | None,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """mPLUG-Owl from ``checkpoint`` (a release directory) or, for stage 1, from ``lm`` + ``clip``; see the module
    docstring. A user's adapter (``lora``) is loaded by the caller."""
    given = {k: files.get(k) for k in ("checkpoint", "lm", "clip", "eva", "qformer")}
    stray = [f"{k}=" for k in ("eva", "qformer") if given[k] is not None]
    if given["checkpoint"] is not None:
        stray += [f"{k}=" for k in ("lm", "clip") if given[k] is not None]
    if stray:
        raise ValueError(
            f"preset {preset.name!r}: {', '.join(stray)} do not belong to mPLUG-Owl; pass checkpoint= (its HF "
            "directory holds every weight) or, for stage 1 from scratch, lm= and clip= (docs/mplug-owl.md)"
        )
    if given["checkpoint"] is not None:
        root = Path(given["checkpoint"])
        if not root.is_dir():
            raise FileNotFoundError(f"checkpoint={root} is not a directory; {HINT}")
        return _from_release(preset, root, tokenizer=tokenizer, dtype=dtype, device=device, device_map=device_map)
    if given["lm"] is None or given["clip"] is None:
        raise ValueError(
            f"preset {preset.name!r} needs checkpoint= (an mPLUG-Owl HF directory: MAGAer13/mplug-owl-llama-7b, -pt "
            "or -ft), or lm= (LLaMA-7B's HF directory) and clip= (openai/clip-vit-large-patch14) to start stage 1 "
            "from scratch. See docs/mplug-owl.md for the downloads"
        )
    cfg = _stage1_config(preset, lm=str(given["lm"]), clip=str(given["clip"]), tokenizer=tokenizer, dtype=dtype)
    return build_model(cfg, device=device, device_map=device_map, init_weights=True)


# ---------------------------------------------------------------------------------------------- the release
def _from_release(
    preset: ModelPreset,
    root: Path,
    *,
    tokenizer: str | Path | None,
    dtype: str | None,
    device: str | torch.device,
    device_map: str | dict | None,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    # Every input is checked before anything large is read.
    numbers = read_mplug_owl_config(root)
    if not any((root / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"{root} holds none of {list(WEIGHT_FILES)}; {HINT}")
    folder = Path(tokenizer) if tokenizer is not None else root
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} has no {' or '.join(TOKENIZER_FILES)}; download the release's tokenizer.model too (or pass "
            "tokenizer= a folder with it)"
        )
    cfg = release_config(preset.model, numbers, tokenizer=folder, dtype=dtype)
    build_device = "cpu" if device_map is not None else device
    model, tok = build_model(cfg, device=build_device, init_weights=False)  # allocated, not initialised
    fill(model, read_mplug_owl_weights(root))
    if device_map is not None:
        from mmgpt.model.checkpoints.ours import dispatch

        dispatch(model, device_map)
    return model, tok


def release_config(base: ModelConfig, numbers: MplugOwlNumbers, *, tokenizer: Path, dtype: str | None) -> ModelConfig:
    """The preset with the numbers of a release's config.json: the ViT, the abstractor, the LM (from text_config)."""
    vision = dataclasses.replace(
        base.vision,
        path=None,
        image_size=numbers.image_size,
        patch_size=numbers.patch_size,
        width=numbers.vision_width,
        layers=numbers.vision_layers,
        heads=numbers.vision_heads,
        mlp_dim=numbers.vision_mlp,
        eps=numbers.vision_eps,
    )
    abstractor = dataclasses.replace(
        base.prefix.abstractor,
        dim=numbers.abstractor_dim,
        layers=numbers.abstractor_layers,
        heads=numbers.abstractor_heads,
        intermediate=numbers.abstractor_intermediate,
        queries=numbers.queries,
        ffn_eps=numbers.abstractor_ffn_eps,
        dropout=numbers.abstractor_dropout,
    )
    prefix = dataclasses.replace(
        base.prefix, resampler="abstractor", abstractor=abstractor, projection_bias=True, end_tokens=1
    )
    hf_config = {k: v for k, v in numbers.text_config.items() if k not in _NOT_ARCHITECTURE}
    hf_config.setdefault("model_type", "llama")  # the original's AutoConfig default
    lm = dataclasses.replace(base.lm, path=None, hf_config=hf_config, tokenizer=str(tokenizer))
    return dataclasses.replace(base, vision=vision, prefix=prefix, lm=lm, dtype=dtype or base.dtype)


def fill(model: VisionLanguageModel, state: MplugOwlState) -> None:
    """Copy a release's weights (already checked key by key against its config) into the built model's parts,
    each tensor converted to the part's dtype on the way; the read tensors are dropped part by part."""
    parts = [
        ("vision", model.vision_encoder.model, state.vision),
        ("abstractor", model.resampler, state.abstractor),
        ("connector", model.connector, state.connector),
        ("language_model", model.language_model, state.language_model),
    ]
    for name, module, weights in parts:
        names = {n for n, _ in module.named_parameters()}
        aliases = {n for n, _ in module.named_parameters(remove_duplicate=False)} - names  # a tied output embedding
        result = module.load_state_dict(weights, strict=False)
        missing = [k for k in result.missing_keys if k not in aliases]
        if missing or result.unexpected_keys:  # the model was built from the same config.json: cannot happen
            raise AssertionError(f"{name}: missing {missing[:8]}, unexpected {result.unexpected_keys[:8]}")
        weights.clear()


# ---------------------------------------------------------------------------------------------- stage 1 start
def _stage1_config(preset: ModelPreset, *, lm: str, clip: str, tokenizer: str | Path | None, dtype: str | None):
    """The preset on LLaMA's and CLIP's directories; the abstractor takes the ViT's width (its keys and values are
    computed from cat(queries, image tokens))."""
    cfg = preset.model
    hf_source(lm, what="language model", key="lm=")
    source = hf_source(clip, what="vision encoder", key="clip=")
    width = CLIPVisionConfig.from_pretrained(source).hidden_size
    if width % cfg.prefix.abstractor.heads:
        raise ValueError(
            f"{clip}: the ViT is {width} wide, which the abstractor's {cfg.prefix.abstractor.heads} heads do not "
            "divide; set prefix.abstractor.heads in a model YAML"
        )
    abstractor = dataclasses.replace(cfg.prefix.abstractor, dim=width)
    return dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, path=clip),
        prefix=dataclasses.replace(cfg.prefix, abstractor=abstractor),
        lm=dataclasses.replace(cfg.lm, path=lm, tokenizer=str(tokenizer) if tokenizer else None),
        dtype=dtype or cfg.dtype,
    )


# ---------------------------------------------------------------------------------------------- users' adapters
def load_mplug_owl_lora(model: VisionLanguageModel, path: str | Path, cfg: LoraConfig | None = None) -> LoadReport:
    """An adapter trained with mPLUG-Owl's own scripts (a peft directory whose keys are
    ``base_model.model.language_model.model.layers.{i}.self_attn.{q,v}_proj.lora_{A,B}.weight``) as this model's
    adapter: injected with the file's rank, alpha, dropout and modules, then loaded strictly. Afterwards it is an
    ordinary mmgpt adapter (``save_adapter`` writes it in our peft format; serving loads that by name)."""
    root = Path(path)
    if root.is_file() and root.name in ADAPTER_FILES:
        root = root.parent
    numbers, state = read_mplug_owl_lora(root)
    if cfg is not None and cfg.r != numbers.r:
        raise ValueError(f"{root}: the adapter has rank {numbers.r} but the preset's lora.r is {cfg.r}")
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters; load this one into a fresh model (or merge first)")
    family = lm_modules(model.language_model)
    mlp = [m for m in numbers.modules if family is not None and m in family.mlp]
    attention = [m for m in numbers.modules if m not in mlp]
    apply_lora(
        model,
        LoraConfig(
            r=numbers.r,
            alpha=numbers.alpha,
            dropout=numbers.dropout,
            self_attention=bool(attention),
            cross_attention=False,
            cross_attention_ff=False,
            lm_mlp=bool(mlp),
            self_attention_modules=attention or None,
            mlp_modules=mlp or None,
        ),
    )
    set_lora_state(model, state, source=str(root))
    model.requires_grad_(False)
    return LoadReport(source=str(root), loaded=sorted(f"language_model.{k}" for k in state), ignored=[])
