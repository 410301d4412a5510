"""LoRA (peft) on a model's language model: apply, count, save/load in peft's own format, merge, switch.

peft injects its layers into ``model.language_model`` in place (``inject_adapter_in_model``): the LM stays the same
HF module, only the targeted ``nn.Linear`` children become ``lora.Linear``, so the decoder layers - and whatever a
model kind hangs on them (Flamingo's gated blocks and their hooks) - are untouched, and ``forward`` works
unchanged. The targets are the groups the model declares (``VisionLanguageModel.lora_modules``: the LM's
self-attention and MLP; Flamingo adds its gated blocks' attention and feed-forward), chosen by ``LoraConfig``, as
one full-match regex over module names inside the LM
(``model\\.layers\\.\\d+\\.(self_attn\\.q_proj|...|gated_cross_attn_layer\\.ff\\.1)``), so nothing else matches;
the vision encoder and resampler are outside the LM and never adapted.

Adapter directories are peft's format (``adapter_config.json`` + ``adapter_model.safetensors``, keys
``base_model.model.<module>.lora_A.weight``): ``PeftModel.from_pretrained(model.language_model, path)`` loads them.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from mmgpt.config import LoraConfig
from mmgpt.model.contract import (
    CROSS_ATTENTION,
    CROSS_ATTENTION_FF,
    GROUPS,
    LM_MLP,
    SELF_ATTENTION,
    VisionLanguageModel,
)
from mmgpt.model.quantize import is_quantized

ADAPTER = "default"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# Parts a run trained in full beside its adapters (``train_groups``: e.g. mPLUG-Owl's abstractor), by parameter name.
TRAINED_PARTS_FILE = "trained_parts.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the LM's own module names
# The LoRA config's switch for each target group.
_SWITCHES = {
    SELF_ATTENTION: "self_attention",
    CROSS_ATTENTION: "cross_attention",
    CROSS_ATTENTION_FF: "cross_attention_ff",
    LM_MLP: "lm_mlp",
}


def target_modules(model: VisionLanguageModel, cfg: LoraConfig) -> dict[str, tuple[str, ...]]:
    """The groups ``cfg`` switches on that the model has -> module names inside one decoder layer.

    ``cfg.self_attention_modules`` / ``mlp_modules`` replace the LM family's names (or name them for a family the
    project does not know). A group switched on that the model lacks (cross-attention on a prefix model) is left
    out; a group without module names is an error that says which setting names them."""
    declared = dict(model.lora_modules())
    if cfg.self_attention_modules:
        declared[SELF_ATTENTION] = tuple(cfg.self_attention_modules)
    if cfg.mlp_modules:
        declared[LM_MLP] = tuple(cfg.mlp_modules)
    chosen: dict[str, tuple[str, ...]] = {}
    for group, switch in _SWITCHES.items():
        if not getattr(cfg, switch):
            continue
        if group in declared:
            chosen[group] = declared[group]
        elif group in (SELF_ATTENTION, LM_MLP):
            model_type = model.language_model.config.model_type
            raise ValueError(
                f"don't know the attention/MLP module names of model_type={model_type!r}; set "
                "lora.self_attention_modules and lora.mlp_modules to names inside one decoder layer (e.g. "
                "['self_attn.q_proj', 'self_attn.v_proj'])"
            )
    return chosen


def target_pattern(model: VisionLanguageModel, cfg: LoraConfig) -> str:
    """The full-match regex over module names inside the LM that selects exactly the configured targets."""
    chosen = [name for names in target_modules(model, cfg).values() for name in names]
    if not chosen:
        switches = ", ".join(_SWITCHES.values())
        raise ValueError(
            f"the LoRA config selects no target of this {model.kind} model: enable at least one of {switches} "
            f"that it has ({', '.join(_SWITCHES[g] for g in model.lora_modules() if g in _SWITCHES)})"
        )
    alternatives = "|".join(re.escape(name) for name in chosen)
    return rf"{re.escape(model.decoder_layers_path)}\.\d+\.({alternatives})"


def peft_config(model: VisionLanguageModel, cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=target_pattern(model, cfg),
        bias="none",
    )


def has_lora(model: VisionLanguageModel) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.language_model.modules())


def apply_lora(model: VisionLanguageModel, cfg: LoraConfig | None = None) -> VisionLanguageModel:
    """Inject fresh LoRA adapters (B = 0, so the outputs are unchanged) into the LM; only they train afterwards."""
    return _inject(model, peft_config(model, cfg or LoraConfig()))


def _inject(model: VisionLanguageModel, config: PeftLoraConfig) -> VisionLanguageModel:
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters; merge them (merge_lora) or build a fresh model first")
    inject_adapter_in_model(config, model.language_model, adapter_name=ADAPTER)
    model.requires_grad_(False)
    for p in lora_parameters(model):
        p.requires_grad_(True)
    return model


def is_lora_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_parameters(model: VisionLanguageModel) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if is_lora_name(name)]


def trainable_parameter_table(model: VisionLanguageModel) -> dict[str, int]:
    """Trainable parameter counts of each group the model has (in GROUPS order) plus "total"."""
    groups = [(model.parameter_group(name), p) for name, p in model.named_parameters()]
    present = {group for group, _ in groups}
    table = {group: 0 for group in GROUPS if group in present}
    for group, p in groups:
        if p.requires_grad:
            table[group] += p.numel()
    table["total"] = sum(table.values())
    return table


def save_adapter(model: VisionLanguageModel, path: str | Path, *, parts: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the LoRA adapter in peft's format: adapter_config.json + adapter_model.safetensors; ``parts`` (model
    parameters trained in full beside the adapters, by name) go to trained_parts.safetensors beside them."""
    if not has_lora(model):
        raise ValueError("the model has no LoRA adapter to save; apply_lora or load_adapter first")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lm = model.language_model
    lm.peft_config[ADAPTER].save_pretrained(str(path))
    state = get_peft_model_state_dict(lm, adapter_name=ADAPTER)
    state = {PEFT_PREFIX + k: v.detach().contiguous() for k, v in state.items()}
    save_file(state, str(path / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
    if parts:
        save_file({k: v.contiguous() for k, v in parts.items()}, str(path / TRAINED_PARTS_FILE))
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


def load_adapter(model: VisionLanguageModel, path: str | Path) -> VisionLanguageModel:
    """Inject the adapter of a peft adapter directory into the LM and load its weights (strict, shape-checked)."""
    config, state = read_adapter(path)
    _inject(model, config)
    set_lora_state(model, state, source=str(Path(path) / ADAPTER_WEIGHTS_FILE))
    parts = Path(path) / TRAINED_PARTS_FILE
    if parts.is_file():
        _load_parts(model, parts)
    return model


def _load_parts(model: VisionLanguageModel, file: Path) -> None:
    """Parameters trained in full beside an adapter, into the model (strict: names and shapes)."""
    params = dict(model.named_parameters())
    state = load_file(str(file))
    unknown = sorted(k for k in state if k not in params)
    wrong = [f"{k}: file {tuple(v.shape)} vs model {tuple(params[k].shape)}" for k, v in state.items() if k in params
             and v.shape != params[k].shape]  # fmt: skip
    if unknown or wrong:
        raise ValueError(f"{file} does not fit this model: unknown parameters {unknown[:8]}, wrong shapes {wrong[:8]}")
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)


def set_lora_state(
    model: VisionLanguageModel, state: dict[str, torch.Tensor], *, source: str, adapter_name: str = ADAPTER
) -> None:
    """Load LoRA weights keyed like peft's saved state (``model.layers.0.self_attn.q_proj.lora_A.weight``, inside
    the LM, no adapter name) into the injected adapter; missing or unexpected keys and wrong shapes are errors."""
    lm = model.language_model
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


def merge_lora(model: VisionLanguageModel) -> VisionLanguageModel:
    """Fold the adapters into the base weights (W += B A * alpha/r) and remove them: a plain, frozen model."""
    if is_quantized(model):
        raise ValueError("the model is quantized: an adapter cannot be folded into 8- or 4-bit weights; keep it apart")
    lm = model.language_model
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


def load_named_adapter(model: VisionLanguageModel, path: str | Path, name: str) -> VisionLanguageModel:
    """Add the adapter of a peft adapter directory under ``name`` beside any already loaded, and leave the model's
    active adapter as it was. ``name`` must be new and must not be ``"default"`` (the model's own adapter)."""
    if name == ADAPTER or not name or name in adapter_names(model):
        raise ValueError(
            f"adapter name {name!r} is empty, reserved or already loaded (loaded: {adapter_names(model)}); "
            "give each adapter its own name"
        )
    if (Path(path) / TRAINED_PARTS_FILE).is_file():
        raise ValueError(
            f"{path} also changes parts of the model beside its LoRA weights ({TRAINED_PARTS_FILE}: e.g. a resampler "
            "trained in full), which every adapter of a served model shares; serve it as its own model (load it with "
            "lora=, or `mmgpt export` it) instead of as a named adapter"
        )
    config, state = read_adapter(path)
    active = active_adapter(model)
    with warnings.catch_warnings():  # peft warns that a second adapter joins the first: that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
        inject_adapter_in_model(config, model.language_model, adapter_name=name)
    set_lora_state(model, state, source=str(Path(path) / ADAPTER_WEIGHTS_FILE), adapter_name=name)
    model.requires_grad_(False)
    for layer in lora_layers(model):  # a served adapter runs without dropout, whatever mode the model is in
        layer.lora_dropout[name].eval()
    select_adapter(model, active)
    return model


def lora_layers(model: VisionLanguageModel) -> list[LoraLayer]:
    return [m for m in model.language_model.modules() if isinstance(m, LoraLayer)]


def adapter_names(model: VisionLanguageModel) -> list[str]:
    """Every adapter loaded into the model's LoRA layers, sorted (``"default"`` is the model's own, if any)."""
    return sorted({name for layer in lora_layers(model) for name in layer.lora_A})


def active_adapter(model: VisionLanguageModel) -> str | None:
    """The named adapter the LoRA layers apply now; None when they apply the model's own (or none)."""
    active = {tuple(layer.active_adapters) for layer in lora_layers(model)}
    names = {name for names in active for name in names}
    return next(iter(names)) if len(names) == 1 and ADAPTER not in names else None


def select_adapter(model: VisionLanguageModel, name: str | None, layers: list[LoraLayer] | None = None) -> None:
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


# ---------------------------------------------------------------------------------------------------------------
# Several adapters in ONE forward (continuous batching): each batch row runs with its own adapter. peft's LoRA layers
# take ``adapter_names`` (one per row) and apply each adapter to its sub-batch only; a forward pre-hook on every
# LoRA layer passes the names bound in a ContextVar - private to the thread or task that runs the forward, so the
# model carries no state and concurrent single-adapter calls (select_adapter under ChatModel's lock) are unaffected.

_ROW_ADAPTERS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("mmgpt_row_adapters", default=None)
_HOOKED = "_mmgpt_row_adapter_hook"


def _pass_row_adapters(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    names = _ROW_ADAPTERS.get()
    if names is None:
        return None
    return args, {**kwargs, "adapter_names": names}


@contextlib.contextmanager
def row_adapters(model: VisionLanguageModel, names: Sequence[str | None]) -> Iterator[None]:
    """Within the block, row i of every forward of ``model`` uses adapter ``names[i]`` (None: the model's own
    ``"default"`` adapter when it has one, else none - as :func:`select_adapter` with None)."""
    layers = lora_layers(model)
    if not layers:
        yield
        return
    for layer in layers:
        if not getattr(layer, _HOOKED, False):
            layer.register_forward_pre_hook(_pass_row_adapters, with_kwargs=True)
            setattr(layer, _HOOKED, True)
    loaded = {n for layer in layers for n in layer.lora_A}
    unknown = sorted({n for n in names if n is not None and n not in loaded})
    if unknown:
        raise ValueError(f"no adapter named {unknown}; loaded: {adapter_names(model)}")
    base = ADAPTER if ADAPTER in loaded else "__base__"  # peft's name for "no adapter" in a mixed batch
    token = _ROW_ADAPTERS.set([base if n is None else n for n in names])
    try:
        yield
    finally:
        _ROW_ADAPTERS.reset(token)
