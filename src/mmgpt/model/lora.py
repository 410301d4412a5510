"""LoRA (peft) on the language model of a Flamingo: apply, count, save/load in peft's own format, merge.

peft injects its layers into ``model.lang_encoder`` in place (``inject_adapter_in_model``): the LM stays the
same HF module, only the targeted ``nn.Linear`` children become ``lora.Linear``, so the decoder layers - and
the forward pre-hooks that run the gated blocks - are untouched, and ``Flamingo.forward`` works unchanged.
Targets are one full-match regex over module names inside the LM
(``model\\.layers\\.\\d+\\.(self_attn\\.q_proj|...|gated_cross_attn_layer\\.ff\\.1)``), so nothing else matches;
the perceiver is outside the LM and never adapted.

Adapter directories are peft's format (``adapter_config.json`` + ``adapter_model.safetensors``, keys
``base_model.model.<module>.lora_A.weight``): ``PeftModel.from_pretrained(model.lang_encoder, path)`` loads them.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from mmgpt.config import LoraConfig
from mmgpt.model.flamingo import Flamingo
from mmgpt.model.fusion.gated_blocks import BLOCK_NAME

ADAPTER = "default"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the LM's own module names
CROSS_ATTENTION_MODULES = (f"{BLOCK_NAME}.attn.to_q", f"{BLOCK_NAME}.attn.to_kv", f"{BLOCK_NAME}.attn.to_out")
CROSS_ATTENTION_FF_MODULES = (f"{BLOCK_NAME}.ff.1", f"{BLOCK_NAME}.ff.3")


@dataclass(frozen=True)
class LmModules:
    """Module names inside one decoder layer of an LM family."""

    self_attention: tuple[str, ...]
    mlp: tuple[str, ...]


_LLAMA_LIKE = LmModules(
    self_attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)
LM_MODULES = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "phi3": LmModules(
        self_attention=("self_attn.qkv_proj", "self_attn.o_proj"), mlp=("mlp.gate_up_proj", "mlp.down_proj")
    ),
    "gpt_neox": LmModules(
        self_attention=("attention.query_key_value", "attention.dense"), mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    ),
    "mpt": LmModules(self_attention=("attn.Wqkv", "attn.out_proj"), mlp=("ffn.up_proj", "ffn.down_proj")),
}
GROUPS = ("self_attention", "cross_attention", "cross_attention_ff", "lm_mlp", "other")


def lm_modules(model: Flamingo, cfg: LoraConfig | None = None) -> LmModules:
    """The self-attention and MLP module names of the model's LM family (``cfg`` overrides win)."""
    cfg = cfg or LoraConfig()
    model_type = model.lang_encoder.config.model_type
    known = LM_MODULES.get(model_type)
    self_attention = cfg.self_attention_modules or (known.self_attention if known else None)
    mlp = cfg.mlp_modules or (known.mlp if known else None)
    if self_attention is None or mlp is None:
        raise ValueError(
            f"don't know the attention/MLP module names of model_type={model_type!r}; set lora.self_attention_modules "
            "and lora.mlp_modules to names inside one decoder layer (e.g. ['self_attn.q_proj', 'self_attn.v_proj'])"
        )
    return LmModules(self_attention=tuple(self_attention), mlp=tuple(mlp))


def target_pattern(model: Flamingo, cfg: LoraConfig) -> str:
    """The full-match regex over module names inside the LM that selects exactly the configured targets."""
    names = lm_modules(model, cfg)
    chosen = [
        *(names.self_attention if cfg.self_attention else ()),
        *(CROSS_ATTENTION_MODULES if cfg.cross_attention else ()),
        *(CROSS_ATTENTION_FF_MODULES if cfg.cross_attention_ff else ()),
        *(names.mlp if cfg.lm_mlp else ()),
    ]
    if not chosen:
        raise ValueError(
            "the LoRA config selects no target: enable at least one of self_attention, "
            "cross_attention, cross_attention_ff, lm_mlp"
        )
    alternatives = "|".join(re.escape(name) for name in chosen)
    return rf"{re.escape(model.decoder_layers_path)}\.\d+\.({alternatives})"


def peft_config(model: Flamingo, cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_pattern(model, cfg),
        bias="none",
    )


def has_lora(model: Flamingo) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.lang_encoder.modules())


def apply_lora(model: Flamingo, cfg: LoraConfig | None = None) -> Flamingo:
    """Inject fresh LoRA adapters (B = 0, so the outputs are unchanged) into the LM; only they train afterwards."""
    return _inject(model, peft_config(model, cfg or LoraConfig()))


def _inject(model: Flamingo, config: PeftLoraConfig) -> Flamingo:
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters; merge them (merge_lora) or build a fresh model first")
    inject_adapter_in_model(config, model.lang_encoder, adapter_name=ADAPTER)
    model.requires_grad_(False)
    for p in lora_parameters(model):
        p.requires_grad_(True)
    return model


def lora_parameters(model: Flamingo) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if ".lora_" in name]


def parameter_group(model: Flamingo, name: str) -> str:
    """Which of GROUPS the parameter ``name`` (a key of ``model.named_parameters()``) belongs to."""
    prefix = f"lang_encoder.{model.decoder_layers_path}."
    if not name.startswith(prefix):
        return "other"
    inside = name[len(prefix) :].split(".", 1)[1]  # drop the layer index
    if inside.startswith(f"{BLOCK_NAME}.attn") or inside == f"{BLOCK_NAME}.attn_gate":
        return "cross_attention"
    if inside.startswith(f"{BLOCK_NAME}.ff"):
        return "cross_attention_ff"
    names = lm_modules(model) if model.lang_encoder.config.model_type in LM_MODULES else None
    if names is not None and any(inside.startswith(m + ".") for m in names.self_attention):
        return "self_attention"
    if names is not None and any(inside.startswith(m + ".") for m in names.mlp):
        return "lm_mlp"
    return "other"


def trainable_parameter_table(model: Flamingo) -> dict[str, int]:
    """Trainable parameter counts by group (GROUPS) plus "total"."""
    table = dict.fromkeys(GROUPS, 0)
    for name, p in model.named_parameters():
        if p.requires_grad:
            table[parameter_group(model, name)] += p.numel()
    table["total"] = sum(table.values())
    return table


def save_adapter(model: Flamingo, path: str | Path) -> Path:
    """Write the LoRA adapter in peft's format: adapter_config.json + adapter_model.safetensors."""
    if not has_lora(model):
        raise ValueError("the model has no LoRA adapter to save; apply_lora or load_adapter first")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lm = model.lang_encoder
    lm.peft_config[ADAPTER].save_pretrained(str(path))
    state = get_peft_model_state_dict(lm, adapter_name=ADAPTER)
    state = {PEFT_PREFIX + k: v.detach().contiguous() for k, v in state.items()}
    save_file(state, str(path / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    return path


def read_adapter(path: str | Path) -> tuple[PeftLoraConfig, dict[str, torch.Tensor]]:
    """A peft adapter directory -> (its LoRA config, its weights keyed inside the LM, without peft's prefix)."""
    path = Path(path)
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a peft adapter directory: {name} is missing")
    config = PeftLoraConfig.from_pretrained(str(path))
    state = {}
    for key, value in load_file(str(path / ADAPTER_WEIGHTS_FILE)).items():
        if not key.startswith(PEFT_PREFIX):
            raise ValueError(f"{path / ADAPTER_WEIGHTS_FILE}: key {key!r} does not start with {PEFT_PREFIX!r}")
        state[key[len(PEFT_PREFIX) :]] = value
    return config, state


def load_adapter(model: Flamingo, path: str | Path) -> Flamingo:
    """Inject the adapter of a peft adapter directory into the LM and load its weights (strict, shape-checked)."""
    config, state = read_adapter(path)
    _inject(model, config)
    set_lora_state(model, state, source=str(Path(path) / ADAPTER_WEIGHTS_FILE))
    return model


def set_lora_state(
    model: Flamingo, state: dict[str, torch.Tensor], *, source: str, adapter_name: str = ADAPTER
) -> None:
    """Load LoRA weights keyed like peft's saved state (``model.layers.0.self_attn.q_proj.lora_A.weight``, inside
    the LM, no adapter name) into the injected adapter; missing or unexpected keys and wrong shapes are errors."""
    lm = model.lang_encoder
    expected = {k: v.shape for k, v in get_peft_model_state_dict(lm, adapter_name=adapter_name).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the model's LoRA targets: {len(missing)} missing keys {missing[:8]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:8]}; check the LoRA config (targets, lm_mlp) and the "
            "base model (layers, cross_attention.every_n_layers)"
        )
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k])}" for k, v in state.items() if v.shape != expected[k]
    ]
    if wrong:
        raise ValueError(f"{source}: LoRA shapes differ from the model's (rank or widths): {wrong[:8]}")
    result = set_peft_model_state_dict(lm, state, adapter_name=adapter_name)
    assert not result.unexpected_keys, result.unexpected_keys


def merge_lora(model: Flamingo) -> Flamingo:
    """Fold the adapters into the base weights (W += B A * alpha/r) and remove them: a plain, frozen Flamingo."""
    lm = model.lang_encoder
    layers = [(name, m) for name, m in lm.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        raise ValueError("the model has no LoRA adapters to merge")
    for name, layer in layers:
        layer.merge(safe_merge=True)
        lm.set_submodule(name, layer.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in lm.__dict__:
            delattr(lm, attr)
    model.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Several named adapters over one shared base (serving). peft keeps every adapter's A/B matrices side by side in
# each LoraLayer and applies only the active ones, so switching is setting a name on each layer - no weights move.
# The active adapter is state on the model's layers: callers that share a model across threads must select and
# run under one lock (mmgpt.chat.ChatModel does).


def load_named_adapter(model: Flamingo, path: str | Path, name: str) -> Flamingo:
    """Add the adapter of a peft adapter directory under ``name`` beside any already loaded, and leave the model's
    active adapter as it was. ``name`` must be new and must not be ``"default"`` (the model's own adapter)."""
    if name == ADAPTER or not name or name in adapter_names(model):
        raise ValueError(
            f"adapter name {name!r} is empty, reserved or already loaded (loaded: {adapter_names(model)}); "
            "give each adapter its own name"
        )
    config, state = read_adapter(path)
    active = active_adapter(model)
    with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
        inject_adapter_in_model(config, model.lang_encoder, adapter_name=name)
    set_lora_state(model, state, source=str(Path(path) / ADAPTER_WEIGHTS_FILE), adapter_name=name)
    model.requires_grad_(False)
    select_adapter(model, active)
    return model


def lora_layers(model: Flamingo) -> list[LoraLayer]:
    return [m for m in model.lang_encoder.modules() if isinstance(m, LoraLayer)]


def adapter_names(model: Flamingo) -> list[str]:
    """Every adapter loaded into the model's LoRA layers, sorted (``"default"`` is the model's own, if any)."""
    return sorted({name for layer in lora_layers(model) for name in layer.lora_A})


def active_adapter(model: Flamingo) -> str | None:
    """The named adapter the LoRA layers apply now; None when they apply the model's own (or none)."""
    active = {tuple(layer.active_adapters) for layer in lora_layers(model)}
    names = {name for names in active for name in names}
    return next(iter(names)) if len(names) == 1 and ADAPTER not in names else None


def select_adapter(model: Flamingo, name: str | None, layers: list[LoraLayer] | None = None) -> None:
    """Make ``name`` the one adapter the LoRA layers apply; None selects the model's own ``"default"`` adapter
    when it has one (a MultiModal-GPT LoRA loaded unmerged), else the bare base. ``layers``: the model's
    :func:`lora_layers`, when the caller switches often and keeps the list."""
    layers = lora_layers(model) if layers is None else layers
    if name is not None and name not in {n for layer in layers for n in layer.lora_A}:
        raise ValueError(f"no adapter named {name!r}; loaded: {adapter_names(model)}")
    base = [ADAPTER] if any(ADAPTER in layer.lora_A for layer in layers) else []
    wanted = base if name is None else [name]
    for layer in layers:
        # inference_mode keeps every adapter frozen; a layer the adapter does not target just skips it.
        layer.set_adapter(wanted, inference_mode=True)
