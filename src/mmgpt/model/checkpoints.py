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
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from mmgpt.config import LoraConfig, ModelConfig, VisionConfig, load_yaml, save_yaml
from mmgpt.lora import apply_lora, has_lora, set_lora_state
from mmgpt.model.build import build_model
from mmgpt.model.flamingo import Flamingo
from mmgpt.model.fusion import BLOCK_NAME
from mmgpt.model.torch_files import read_safetensors_into, read_torch_file, safetensors_header, write_safetensors

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
    """Write ``model`` as one self-contained directory (see the module docstring); LoRA must be merged first."""
    if has_lora(model):
        raise ValueError(
            "the model has unmerged LoRA adapters; fold them in with mmgpt.lora.merge_lora(model) first (or save "
            "the adapter on its own with mmgpt.lora.save_adapter)"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_yaml(describe(model), path / CONFIG_FILE)
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
) -> tuple[Flamingo, PreTrainedTokenizerBase]:
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
    tokenizer = AutoTokenizer.from_pretrained(path / TOKENIZER_DIR)
    build_device = "cpu" if device_map is not None else device
    model, tokenizer = build_model(cfg, tokenizer=tokenizer, device=build_device, init_weights=False)
    load_weights(model, path / WEIGHTS_FILE)
    if device_map is not None:
        dispatch(model, device_map)
    return model.eval(), tokenizer


def load_weights(model: Flamingo, file: str | Path) -> None:
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


def dispatch(model: Flamingo, device_map: str | dict) -> None:
    """Spread the LM over GPUs with accelerate; gated blocks follow their layers, ViT and perceiver the embeddings."""
    try:
        from accelerate import dispatch_model, infer_auto_device_map
    except ImportError:
        raise ImportError("device_map needs accelerate: pip install accelerate") from None
    lm = model.lang_encoder
    if isinstance(device_map, str):
        device_map = infer_auto_device_map(lm, no_split_module_classes=lm._no_split_modules or [])
    dispatch_model(lm, device_map=device_map)
    first = next(lm.get_input_embeddings().parameters()).device
    model.vision_encoder.to(first)
    model.perceiver.to(first)


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

# Buffers that old HF versions saved with the weights; they are recomputed, never loaded.
_STRAY_BUFFER = re.compile(r"(^|\.)(inv_freq|original_inv_freq|masked_bias|_float_tensor)$|\.(attention|attn)\.bias$")
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])(\.[^.]+)?\.weight$")
PEFT_WRAPPER = "lang_encoder.base_model.model."


@dataclass
class LoadReport:
    """What a loader did: model keys written; file keys not loaded (stray buffers, then aliases of loaded keys)."""

    source: str
    loaded: list[str]
    ignored: list[str]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A training or release file -> its flat state dict: ``model_state_dict`` unwrapped, ``module.`` stripped."""
    obj = read_torch_file(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; not a state dict")
        while key.startswith("module."):
            key = key[len("module.") :]
        state[key] = value
    return state


def lm_key(key: str, *, layers_path: str) -> str:
    """An OpenFlamingo key inside the LM (``gated_cross_attn_layers.7.ff.1.weight``) -> ours (LM-relative)."""
    layers = re.escape(layers_path)
    key = re.sub(r"^gated_cross_attn_layers\.(\d+)\.", rf"{layers_path}.\1.{BLOCK_NAME}.", key)
    key = re.sub(r"^old_decoder_blocks\.(\d+)\.", rf"{layers_path}.\1.", key)
    return re.sub(rf"^({layers}\.\d+)\.decoder_layer\.", r"\1.", key)


def _map_keys(
    state: dict[str, torch.Tensor], mapper: Callable[[str], str | None], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str]]:
    """Apply ``mapper`` (file key -> model key or None for 'not ours'); aliases must hold equal tensors.

    Returns (mapped state, model key -> file key, file keys the mapper rejected, alias keys folded into another)."""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    rejected, aliases = [], []
    for key, value in state.items():
        target = mapper(key)
        if target is None:
            rejected.append(key)
            continue
        if target in mapped:
            if mapped[target].shape != value.shape or not torch.equal(mapped[target], value):
                raise ValueError(f"{source}: {origin[target]!r} and its alias {key!r} hold different tensors")
            aliases.append(key)
            continue
        mapped[target], origin[target] = value, key
    return mapped, origin, rejected, aliases


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

    mapped, origin, vision, aliases = _map_keys(read_state_dict(path), mapper, source)
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
    required = {f"perceiver.{n}" for n, _ in model.perceiver.named_parameters()}
    for i, block in model.gated_blocks().items():
        required |= {f"lang_encoder.{layers_path}.{i}.{BLOCK_NAME}.{n}" for n, _ in block.named_parameters()}
    embedding = _input_embedding_key(model)
    required.add(embedding)

    ignored = [k for k in mapped if k not in params and (k in buffers or _STRAY_BUFFER.search(k))]
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


def _input_embedding_key(model: Flamingo) -> str:
    weight = model.lang_encoder.get_input_embeddings().weight
    return next(f"lang_encoder.{n}" for n, p in model.lang_encoder.named_parameters() if p is weight)


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


def load_multimodal_gpt_lora(model: Flamingo, path: str | Path, cfg: LoraConfig | None = None) -> LoadReport:
    """Load MultiModal-GPT's LoRA file (``mmgpt-lora-v0-release.pt``) into ``model``, injecting the adapters first.

    ``cfg`` (default: the paper's r=16, alpha=16 targets) must match the file: the rank is checked against the
    tensors, and a key the targets don't produce (or a target the file lacks) is an error listing the keys.
    """
    source = str(path)
    cfg = cfg or LoraConfig()
    layers_path = model.decoder_layers_path

    def mapper(key: str) -> str | None:
        if not key.startswith(PEFT_WRAPPER):
            return None
        match = _LORA_KEY.match(lm_key(key[len(PEFT_WRAPPER) :], layers_path=layers_path))
        return f"{match['module']}.{match['ab']}.weight" if match else None

    raw = read_state_dict(path)
    state, _, rejected, aliases = _map_keys(raw, mapper, source)
    ignored = [k for k in rejected if _STRAY_BUFFER.search(k)]
    unexpected = [k for k in rejected if k not in ignored]
    if unexpected:
        raise ValueError(
            f"{source}: {len(unexpected)} keys are not LoRA weights under {PEFT_WRAPPER!r}: {unexpected[:8]}; "
            "is this MultiModal-GPT's LoRA file? (an OpenFlamingo checkpoint loads with load_openflamingo_checkpoint)"
        )
    if not state:
        raise ValueError(f"{source} holds no LoRA weights")
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if ranks != {cfg.r}:
        raise ValueError(f"{source} holds LoRA adapters of rank {sorted(ranks)} but lora.r={cfg.r}; set lora.r")
    if not has_lora(model):
        apply_lora(model, cfg)
    set_lora_state(model, state, source=source)
    loaded = sorted(f"lang_encoder.{k}" for k in state)
    return LoadReport(source=source, loaded=loaded, ignored=sorted(ignored) + sorted(aliases))
