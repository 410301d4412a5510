"""Builders: ModelConfig -> (Flamingo, tokenizer, image transform); special tokens; what trains.

Builders take keyword-only arguments; presets supply numbers; tests call the same builders with tiny numbers.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mmgpt.config import ModelConfig, VisionConfig
from mmgpt.model.encoders.clip import VisionEncoder
from mmgpt.model.flamingo import Flamingo
from mmgpt.model.resamplers.perceiver import PerceiverResampler
from mmgpt.tokens import SpecialTokenIds, add_special_tokens

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_vision_encoder(cfg: VisionConfig, *, dtype: torch.dtype = torch.float32) -> VisionEncoder:
    if cfg.path is not None:
        source = hf_source(cfg.path, what="vision encoder", key="vision.path")
        if not Path(source).is_dir():  # a hub id: fetch the directory first
            from huggingface_hub import snapshot_download

            source = snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt"])
        return VisionEncoder.from_pretrained(source, dtype=dtype)
    return VisionEncoder.from_numbers(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.width,
        layers=cfg.layers,
        heads=cfg.heads,
        mlp_dim=cfg.mlp_dim,
    ).to(dtype)


def build_language_model(
    cfg: ModelConfig, *, dtype: torch.dtype = torch.float32, device_map: str | dict | None = None
) -> PreTrainedModel:
    """The LM: ``lm.path`` (a local HF directory, or a hub id where a hub is reachable) or ``lm.hf_config`` numbers.

    ``device_map`` (e.g. ``"cuda"``, ``"auto"``, ``{"": 0}``) is passed to ``from_pretrained`` so the weights go
    straight to their device(s) instead of through a CPU copy.
    """
    lm_cfg = cfg.lm
    if lm_cfg.path is not None:
        source = hf_source(lm_cfg.path, what="language model", key="lm.path")
        try:
            config = AutoConfig.from_pretrained(source)
        except ValueError as error:  # e.g. model_type 'mosaic_gpt': custom code, not a transformers class
            raise ValueError(
                f"{lm_cfg.path}: transformers has no native class for this language model ({error}); use a "
                "checkpoint in a format transformers knows (e.g. model_type llama, mpt, gpt_neox)"
            ) from None
        return AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, device_map=device_map)
    if lm_cfg.hf_config is None:
        raise ValueError(
            "the model config names no language model: set lm.path (a local HF directory) or "
            "lm.hf_config (a dict with model_type and sizes, for a randomly initialised LM)"
        )
    hf = dict(lm_cfg.hf_config)
    model_type = hf.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"lm.hf_config needs a model_type (e.g. 'llama'); got keys {sorted(lm_cfg.hf_config)}")
    config = AutoConfig.for_model(model_type, **hf)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hf_source(path: str | Path, *, what: str, key: str) -> str:
    """A local directory with a config.json, or a hub id (``org/name``) when no such local path exists."""
    local = Path(path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{what} directory {local} has no config.json; set {key} to a HF model directory (config.json + "
                "weights), e.g. a download of the model's hub repository"
            )
        return str(local)
    if local.exists() or not _HUB_ID.match(str(path)):
        raise FileNotFoundError(f"{what} {path} ({key}) is not a directory; set {key} to a local HF model directory")
    return str(path)  # a hub id: transformers downloads it (needs network access)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    source = cfg.lm.tokenizer or cfg.lm.path
    if source is None:
        raise ValueError("the model config names no tokenizer: set lm.tokenizer (or lm.path) to a local directory")
    return AutoTokenizer.from_pretrained(source)


def resize_embeddings(lm: PreTrainedModel, vocab_size: int) -> None:
    """Resize the LM's vocabulary to ``vocab_size`` (the tokenizer's length), as OpenFlamingo does.

    Growing: new rows are the mean of the old ones (deterministic); for an untied LM the new output rows are never
    trained and are in no checkpoint, so the mean row gives them an average logit and they are (almost) never chosen.
    Shrinking: LMs whose table is padded beyond the tokenizer (MPT, RedPajama: 50432 rows for 50277 tokens) lose
    rows no token id reaches; OpenFlamingo v2 checkpoints hold exactly ``len(tokenizer)`` rows.
    """
    old = lm.get_input_embeddings().weight.shape[0]
    if vocab_size == old:
        return
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    if vocab_size < old:
        return
    with torch.no_grad():
        tables = {id(lm.get_input_embeddings().weight): lm.get_input_embeddings().weight}
        out = lm.get_output_embeddings()
        if out is not None:
            tables.setdefault(id(out.weight), out.weight)
        for weight in tables.values():
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)


def build_flamingo(
    *,
    cfg: ModelConfig,
    vision_encoder: VisionEncoder,
    lang_encoder: PreTrainedModel,
    special: SpecialTokenIds,
    vocab_size: int,
    init_fusion: bool = True,
) -> Flamingo:
    """Assemble a Flamingo from a vision encoder and an LM (new perceiver and gated blocks, embeddings resized).

    Each gated block is put on its decoder layer's device and the perceiver on the vision encoder's, so an LM
    spread over several GPUs (a device map) keeps every block beside its layer. ``init_fusion=False`` allocates
    the perceiver and blocks without initialising them, directly in the LM's dtype on their device: for a
    checkpoint that fills them (the 9B model's 1.2B fusion parameters are never built on the CPU in fp32).
    """
    dtype = next(lang_encoder.parameters()).dtype
    resize_embeddings(lang_encoder, vocab_size)
    with torch.device("meta") if not init_fusion else contextlib.nullcontext():
        perceiver = PerceiverResampler(
            dim=vision_encoder.width,
            depth=cfg.perceiver.depth,
            heads=cfg.perceiver.heads,
            dim_head=cfg.perceiver.dim_head,
            num_latents=cfg.perceiver.num_latents,
            ff_mult=cfg.perceiver.ff_mult,
        )
        model = Flamingo(
            vision_encoder=vision_encoder,
            perceiver=perceiver,
            lang_encoder=lang_encoder,
            special=special,
            config=cfg,
        )
    layers = lang_encoder.get_submodule(model.decoder_layers_path)
    placements = [(model.perceiver, _device_of(vision_encoder))]
    placements += [(block, _device_of(layers[i])) for i, block in model.gated_blocks().items()]
    for module, device in placements:
        module.to(dtype)
        if not init_fusion and device.type != "meta":
            module.to_empty(device=device)  # no buffers in these modules: nothing is left uninitialised but weights
        else:
            module.to(device)
    freeze(model)
    return model


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def build_model(
    cfg: ModelConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    init_weights: bool = True,
) -> tuple[Flamingo, PreTrainedTokenizerBase]:
    """Build the model a config describes; returns (model, tokenizer with the special tokens added).

    ``device``: where the model goes; a pretrained LM is loaded straight onto it. ``device_map``: instead, a
    transformers device map for the LM (``"auto"`` spreads it over the visible GPUs; needs accelerate); the
    gated blocks follow their layers and the ViT and perceiver go to the device of the LM's input embeddings.
    ``init_weights=False``: every weight not read from a pretrained directory is allocated but not initialised,
    for a checkpoint that fills all of them (loading our own format, or an OpenFlamingo checkpoint into the
    perceiver and blocks); random initialisation of billions of parameters would cost minutes for nothing.
    """
    if cfg.fusion != "cross_attention":
        raise ValueError(f"fusion={cfg.fusion!r} is not available; use 'cross_attention'")
    dtype = DTYPES[cfg.dtype]
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    special = add_special_tokens(tokenizer)
    lm_device_map = device_map if device_map is not None else (None if torch.device(device).type == "cpu" else device)
    # Weights built from numbers are allocated on their device directly (no CPU copy first); pretrained ones are
    # loaded there by from_pretrained.
    on_device = torch.device(device) if device_map is None else contextlib.nullcontext()
    with _no_init(not init_weights and cfg.lm.path is None), on_device:
        lang_encoder = build_language_model(cfg, dtype=dtype, device_map=lm_device_map)
    lang_encoder.tie_weights()  # skipping init_weights also skips its tying of tied LMs (MPT's lm_head)
    with _no_init(not init_weights and cfg.vision.path is None), on_device:
        vision_encoder = build_vision_encoder(cfg.vision, dtype=dtype)
    if device_map is None:
        lang_encoder.to(device)
    vision_encoder.to(_device_of(lang_encoder.get_input_embeddings()))
    model = build_flamingo(
        cfg=cfg,
        vision_encoder=vision_encoder,
        lang_encoder=lang_encoder,
        special=special,
        vocab_size=len(tokenizer),
        init_fusion=init_weights,
    )
    return model.eval(), tokenizer


@contextlib.contextmanager
def _no_init(enabled: bool) -> Iterator[None]:
    """Skip weight initialisation (torch.nn.init and transformers' init_weights) while building."""
    if not enabled:
        yield
        return
    from transformers.initialization import no_init_weights

    with no_init_weights():
        yield


def freeze(model: nn.Module) -> None:
    model.requires_grad_(False)


def openflamingo_trainable(model: Flamingo) -> list[nn.Parameter]:
    """Unfreeze what OpenFlamingo pretraining trains: perceiver, gated blocks, input embeddings. Returns them."""
    freeze(model)
    params = [*model.perceiver.parameters()]
    for block in model.gated_blocks().values():
        params += list(block.parameters())
    params.append(model.lang_encoder.get_input_embeddings().weight)
    for p in params:
        p.requires_grad_(True)
    return params
