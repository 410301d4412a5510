"""mPLUG-Owl v1 HF directories (``MAGAer13/mplug-owl-llama-7b`` and kin) and users' LoRA adapters, strictly.

A release directory holds ``config.json`` (``model_type "mplug-owl"``, nested ``vision_config``,
``visual_abstractor_config``, ``text_config``, top-level ``num_query_tokens``) and the weights of
``MplugOwlForConditionalGeneration`` as ``pytorch_model-0000k-of-0000n.bin`` + ``pytorch_model.bin.index.json`` (or
one ``pytorch_model.bin``, or ``model.safetensors`` [+ index] after a conversion). Key map, file -> our parts:

    vision_model.*                        -> vision      CLIPVisionModel keys, see :func:`mplug_vision_state`
    query_tokens                          -> abstractor  query_tokens
    abstractor.encoder.*                  -> abstractor  encoder.*          (VisualAbstractor: same names)
    abstractor.visual_fc.{weight,bias}    -> connector   proj.{weight,bias}
    abstractor.vit_eos                    -> connector   end_tokens
    language_model.*                      -> language_model  *              (the LM's own keys: model.*, lm_head.*)
    language_model.model.layers.{i}.self_attn.rotary_emb.inv_freq (transformers 4.28 buffers) -> ignored, reported

Anything else, any missing key and any wrong shape is an error that lists them (the expected keys and shapes come
from the config: each part is built on the meta device). Shards are read one at a time, memory-mapped, and their
tensors moved into the result: the LM (14 GB in fp16 for 7B) is never held twice. Tensors keep the file's dtype
unless ``dtype`` is given (converted one tensor at a time); ``load_state_dict`` copies any dtype into a model.

Legend: d vision width, hd head width (d = heads x hd).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, PretrainedConfig

from mmgpt.model.checkpoints.keys import STRAY_BUFFER, LoadReport, map_keys, read_state_dict
from mmgpt.model.resamplers.abstractor import VisualAbstractor

CONFIG_FILE = "config.json"
# In HF's order of preference: safetensors (a user's conversion) first, then the release's .bin shards.
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors")
WEIGHT_FILES += ("pytorch_model.bin.index.json", "pytorch_model.bin")
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ABSTRACTOR_NORM_EPS = 1e-5  # norm1 / normk / norm2 are built without eps in the original: torch's default
HINT = "point at the mPLUG-Owl HF directory as downloaded (e.g. MAGAer13/mplug-owl-llama-7b)"


_VISION, _ABSTRACTOR = "vision_config", "visual_abstractor_config"
_FIELDS = {  # our field: (config.json section, field, the original code's default: None = required)
    "image_size": (_VISION, "image_size", None),
    "patch_size": (_VISION, "patch_size", None),
    "vision_width": (_VISION, "hidden_size", None),
    "vision_layers": (_VISION, "num_hidden_layers", None),
    "vision_heads": (_VISION, "num_attention_heads", None),
    "vision_mlp": (_VISION, "intermediate_size", None),
    "vision_eps": (_VISION, "layer_norm_eps", 1e-6),
    "abstractor_dim": (_ABSTRACTOR, "hidden_size", None),
    "abstractor_layers": (_ABSTRACTOR, "num_hidden_layers", None),
    "abstractor_heads": (_ABSTRACTOR, "num_attention_heads", None),
    "abstractor_intermediate": (_ABSTRACTOR, "intermediate_size", None),  # code default 4096 != released 2816
    "abstractor_ffn_eps": (_ABSTRACTOR, "layer_norm_eps", 1e-6),
    "abstractor_dropout": (_ABSTRACTOR, "attention_probs_dropout_prob", 0.1),
    "queries": (None, "num_query_tokens", 64),
}


@dataclass(frozen=True)
class MplugOwlNumbers:
    """The numbers of a release's config.json (where each comes from: ``_FIELDS``); builds each part's config."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    vision_eps: float
    abstractor_dim: int
    abstractor_layers: int
    abstractor_heads: int
    abstractor_intermediate: int
    abstractor_ffn_eps: float
    abstractor_dropout: float
    queries: int
    lm_width: int
    text_config: dict[str, Any] = field(hash=False)  # the LM's config dict, as in config.json

    def clip_vision_config(self) -> CLIPVisionConfig:
        """mPLUG's ViT as transformers' CLIP (same field names): QuickGELU (hard-wired in the original), eps 1e-6."""
        values = {name: getattr(self, ours) for ours, (section, name, _) in _FIELDS.items() if section == _VISION}
        return CLIPVisionConfig(**values, hidden_act="quick_gelu", projection_dim=self.vision_width)

    def abstractor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`VisualAbstractor`."""
        values = {k.removeprefix("abstractor_"): v for k, v in vars(self).items() if k.startswith("abstractor_")}
        return values | dict(queries=self.queries, vision_width=self.vision_width, eps=ABSTRACTOR_NORM_EPS)

    def lm_config(self) -> PretrainedConfig:
        """The LM's transformers config (``AutoConfig.for_model``; model_type llama when absent, as the original)."""
        return _lm_config(self.text_config)


def _lm_config(text_config: dict[str, Any]) -> PretrainedConfig:
    values = dict(text_config)
    return AutoConfig.for_model(values.pop("model_type", "llama"), **values)


def read_mplug_owl_config(path: str | Path) -> MplugOwlNumbers:
    """``{path}/config.json`` -> :class:`MplugOwlNumbers`. Shape numbers are required (a code default is known not
    to fit the releases: abstractor intermediate_size 4096 vs 2816); eps, dropout and num_query_tokens default to
    the original code's values when absent. Errors name the field."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; {HINT}")
    config = json.loads(file.read_text())
    if config.get("model_type") != "mplug-owl":
        raise ValueError(f"{file}: model_type is {config.get('model_type')!r}, not 'mplug-owl'; {HINT}")
    for section in (_VISION, _ABSTRACTOR, "text_config"):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"{file}: field {section!r} (a nested config) is missing; {HINT}")

    def number(section: str | None, name: str, default: float | None) -> Any:
        value = (config[section] if section else config).get(name, default)
        where = f"{section}.{name}" if section else name
        if value is None:
            raise ValueError(f"{file}: field {where} is missing; add the release's value to config.json")
        if isinstance(value, bool) or not isinstance(value, (int, type(default or 0))):
            raise ValueError(f"{file}: field {where} is {value!r}, not a {type(default or 0).__name__}")
        return value

    values = {ours: number(*where) for ours, where in _FIELDS.items()}
    key_width = number(_ABSTRACTOR, "encoder_hidden_size", 1024)
    if not values["vision_width"] == key_width == values["abstractor_dim"]:
        raise ValueError(
            f"{file}: {_VISION}.hidden_size={values['vision_width']}, {_ABSTRACTOR}.encoder_hidden_size={key_width} "
            f"and {_ABSTRACTOR}.hidden_size={values['abstractor_dim']} must be equal (the abstractor attends over "
            "cat(queries, image tokens) with one key projection); fix config.json"
        )
    try:
        lm_width = _lm_config(config["text_config"]).hidden_size
    except (KeyError, ValueError) as err:
        raise ValueError(f"{file}: text_config is not a transformers config ({err}); {HINT}") from None
    return MplugOwlNumbers(**values, lm_width=lm_width, text_config=dict(config["text_config"]))


_VISION_RENAMES = [  # mPLUG name -> CLIPVisionModel name (transformers 5.x: top level, no ``vision_model.``)
    (r"^embeddings\.patch_embed\.weight$", "embeddings.patch_embedding.weight"),
    (r"^embeddings\.pre_layernorm\.(weight|bias)$", r"pre_layrnorm.\1"),
    (r"^post_layernorm\.(weight|bias)$", r"post_layernorm.\1"),
    (r"^(encoder\.layers\.\d+)\.input_layernorm\.(weight|bias)$", r"\1.layer_norm1.\2"),
    (r"^(encoder\.layers\.\d+)\.post_attention_layernorm\.(weight|bias)$", r"\1.layer_norm2.\2"),
    (r"^(encoder\.layers\.\d+)\.self_attn\.dense\.(weight|bias)$", r"\1.self_attn.out_proj.\2"),
    (r"^(encoder\.layers\.\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"\1.mlp.\2.\3"),
]
_QKV = re.compile(r"^(encoder\.layers\.\d+)\.self_attn\.query_key_value\.(weight|bias)$")


def mplug_vision_state(state: dict[str, torch.Tensor], *, heads: int) -> dict[str, torch.Tensor]:
    """mPLUG's ViT keys (below ``vision_model.``) -> ``CLIPVisionModel`` keys (its ``position_ids`` buffer is not
    persistent: nothing to supply). ``cls_token`` [1,1,d] -> ``class_embedding`` [d]; ``position_embedding``
    [1,257,d] -> ``.weight`` [257,d]; the fused ``query_key_value`` [3d, d] is interleaved per head (rows: head,
    then q/k/v, then hd), so q/k/v = ``W.view(heads, 3, hd, d)[:, j].reshape(d, d)`` (bias ``view(heads, 3, hd)``).
    A plain ``chunk(3)`` would silently mix heads. Unknown keys are an error listing them."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key == "embeddings.cls_token":
            out["embeddings.class_embedding"] = value.reshape(value.shape[-1])
        elif key == "embeddings.position_embedding":
            out["embeddings.position_embedding.weight"] = value.reshape(-1, value.shape[-1])
        elif match := _QKV.match(key):
            layer, kind = match.groups()
            width = value.shape[0] // 3
            if value.shape[0] % (3 * heads):
                raise ValueError(f"vision_model.{key} has shape {tuple(value.shape)}: not 3 x heads={heads} rows")
            split = value.reshape(heads, 3, width // heads, *value.shape[1:])
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{layer}.self_attn.{name}.{kind}"] = split[:, j].reshape(width, *value.shape[1:])
        elif (target := next((re.sub(p, r, key) for p, r in _VISION_RENAMES if re.match(p, key)), None)) is not None:
            out[target] = value
        else:
            unknown.append(f"vision_model.{key}")
    if unknown:
        raise ValueError(f"{len(unknown)} vision keys are not mPLUG-Owl ViT weights: {sorted(unknown)[:8]}")
    return out


@dataclass
class MplugOwlState:
    """The weights of a release, keyed for our parts (see the module docstring); ``report.loaded`` names them
    ``{part}.{key}``, ``report.ignored`` the file keys skipped (inv_freq buffers)."""

    vision: dict[str, torch.Tensor]
    abstractor: dict[str, torch.Tensor]
    connector: dict[str, torch.Tensor]
    language_model: dict[str, torch.Tensor]
    report: LoadReport


_ROUTES = [  # a release key -> ``{part}.{key}`` (``vision_raw``: still mPLUG names)
    (r"^vision_model\.", "vision_raw."),
    (r"^query_tokens$", "abstractor.query_tokens"),
    (r"^abstractor\.encoder\.", "abstractor.encoder."),
    (r"^abstractor\.visual_fc\.(weight|bias)$", r"connector.proj.\1"),
    (r"^abstractor\.vit_eos$", "connector.end_tokens"),
    (r"^language_model\.", "language_model."),
]


def _route(key: str) -> str | None:
    return next((re.sub(p, target, key) for p, target in _ROUTES if re.match(p, key)), None)


def read_mplug_owl_weights(path: str | Path, *, dtype: torch.dtype | None = None) -> MplugOwlState:
    """Read a release directory's weights (all shards) into our parts' state dicts; strict (module docstring)."""
    root = Path(path)
    numbers = read_mplug_owl_config(root)
    files, index = _weight_files(root)
    parts: dict[str, dict[str, torch.Tensor]] = {
        p: {} for p in ("vision_raw", "abstractor", "connector", "language_model")
    }
    unknown: list[str] = []
    for file in files:
        state = _read_weights(file)
        if index is not None:  # each key where the index says (so in one shard only), none the index names missing
            misplaced = [f"{k} (index: {index.get(k)})" for k in state if index.get(k) != file.name]
            absent = [k for k, f in index.items() if f == file.name and k not in state]
            if misplaced or absent:
                raise ValueError(
                    f"{file} does not match {root}'s index: {len(misplaced)} keys the index places elsewhere "
                    f"{misplaced[:8]}, {len(absent)} keys the index places here but the shard lacks {absent[:8]}; "
                    "the download is incomplete or mixes two releases: download the shards and the index again"
                )
        mapped, _, rejected, _ = map_keys(state, _route, str(file))
        del state
        unknown += rejected
        for target in list(mapped):
            part, key = target.split(".", 1)
            value = mapped.pop(target)  # moved: each tensor has one owner while the next shard is read
            parts[part][key] = value if dtype is None or not value.is_floating_point() else value.to(dtype)
    if unknown:
        raise ValueError(f"{root}: {len(unknown)} keys are not part of mPLUG-Owl: {sorted(unknown)[:8]}; {HINT}")
    result = {"vision": mplug_vision_state(parts.pop("vision_raw"), heads=numbers.vision_heads), **parts}
    ignored = _check_against(result, numbers, root)
    loaded = sorted(f"{part}.{key}" for part, state in result.items() for key in state)
    report = LoadReport(source=str(root), loaded=loaded, ignored=sorted(f"language_model.{k}" for k in ignored))
    return MplugOwlState(**result, report=report)


def expected_shapes(numbers: MplugOwlNumbers) -> tuple[dict[str, dict[str, tuple[int, ...]]], set[str]]:
    """(part -> key -> shape of every tensor the parts load, the LM's tied alias names: a tied output embedding
    is expected under its first name only), from each part built on the meta device."""
    with torch.device("meta"):
        vision = CLIPVisionModel(numbers.clip_vision_config())
        abstractor = VisualAbstractor(**numbers.abstractor_kwargs())
        lm = AutoModelForCausalLM.from_config(numbers.lm_config())
    aliases = {n for n, _ in lm.named_parameters(remove_duplicate=False)} - {n for n, _ in lm.named_parameters()}
    width = numbers.lm_width
    connector = {"proj.weight": (width, numbers.abstractor_dim), "proj.bias": (width,), "end_tokens": (1, 1, width)}
    shapes = {
        "vision": {k: tuple(v.shape) for k, v in vision.state_dict().items()},
        "abstractor": {k: tuple(v.shape) for k, v in abstractor.state_dict().items()},
        "connector": connector,
        "language_model": {k: tuple(v.shape) for k, v in lm.state_dict().items() if k not in aliases},
    }
    return shapes, aliases


def _check_against(parts: dict[str, dict[str, torch.Tensor]], numbers: MplugOwlNumbers, root: Path) -> list[str]:
    """Missing, unexpected and wrong-shaped keys -> one error listing them. Returns (and drops) the LM keys
    skipped: stray buffers of old transformers versions (inv_freq) and a tied output embedding's second name."""
    expected, aliases = expected_shapes(numbers)
    lm = parts["language_model"]
    ignored = sorted(k for k in lm if k not in expected["language_model"] and (k in aliases or STRAY_BUFFER.search(k)))
    for key in ignored:
        del lm[key]
    missing, unexpected, wrong = [], [], []
    for part, state in parts.items():
        want = expected[part]
        missing += [f"{part}.{k}" for k in want if k not in state]
        unexpected += [f"{part}.{k}" for k in state if k not in want]
        wrong += [
            f"{part}.{k}: {tuple(v.shape)} vs {want[k]}" for k, v in state.items() if want.get(k, v.shape) != v.shape
        ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{root} does not fit its config.json: {len(missing)} missing keys {missing[:8]}, {len(unexpected)} "
            f"unexpected keys {unexpected[:8]}, {len(wrong)} wrong shapes {wrong[:8]} (named part.key, our names); "
            "check that config.json and the weights come from the same release"
        )
    return ignored


def _weight_files(root: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files to read, in order, and the index's weight_map (None for a single file)."""
    name = next((n for n in WEIGHT_FILES if (root / n).is_file()), None)
    if name is None:
        raise FileNotFoundError(f"{root} holds none of {list(WEIGHT_FILES)}; {HINT}")
    if not name.endswith(".index.json"):
        return [root / name], None
    index = json.loads((root / name).read_text())
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{root / name} has no 'weight_map'; re-download the index file")
    shards = sorted(set(weight_map.values()))
    absent = [s for s in shards if not (root / s).is_file()]
    if absent:
        raise FileNotFoundError(f"{root / name} names shards that are not in {root}: {absent}; download them too")
    return [root / s for s in shards], weight_map


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return read_state_dict(file)  # restricted unpickler, memory-mapped


# ---------------------------------------------------------------------------------------------------------------
# Users' LoRA adapters. mPLUG-Owl's train.py wraps the whole MplugOwlForConditionalGeneration with peft
# (target_modules=r'.*language_model.*\.(q_proj|v_proj)', r 8, alpha 32, dropout 0.05), so PeftModel.save_pretrained
# writes adapter_config.json + adapter_model.bin with keys
#     base_model.model.language_model.model.layers.{i}.self_attn.q_proj.lora_A.weight   (-> model.layers.{i}...)
# (newer peft: ``lora_A.default.weight``; converted: adapter_model.safetensors).

_LORA_KEY = re.compile(
    r"^base_model\.model\.language_model\.(?P<module>model\.layers\.\d+\.(?P<inner>.+))\.(?P<ab>lora_[AB])"
    r"(\.default)?\.weight$"
)


@dataclass(frozen=True)
class MplugOwlLora:
    """An adapter's numbers; ``modules``: the adapted module names inside one decoder layer (``self_attn.q_proj``)."""

    r: int
    alpha: int
    dropout: float
    modules: tuple[str, ...]

    def peft_config(self) -> PeftLoraConfig:
        """A peft LoraConfig for the LM alone (targets: these modules in every decoder layer)."""
        targets = rf"model\.layers\.\d+\.({'|'.join(re.escape(m) for m in self.modules)})"
        return PeftLoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets)


def read_mplug_owl_lora(path: str | Path) -> tuple[MplugOwlLora, dict[str, torch.Tensor]]:
    """An adapter directory of mPLUG-Owl's training scripts -> (its numbers, its weights keyed inside the LM:
    ``model.layers.{i}.self_attn.q_proj.lora_A.weight``). Keys that are not LoRA weights of the LM's decoder
    layers, ranks other than ``r``, lone halves and modules that target_modules does not select are errors."""
    root = Path(path)
    config_file = root / ADAPTER_CONFIG_FILE
    weights = next((root / n for n in ADAPTER_FILES if (root / n).is_file()), None)
    if not config_file.is_file() or weights is None:
        raise FileNotFoundError(
            f"{root} is not a peft adapter directory: it needs {ADAPTER_CONFIG_FILE} and one of {list(ADAPTER_FILES)} "
            "(what mPLUG-Owl's train.py --use-lora saves in its output and checkpoint directories)"
        )
    config = json.loads(config_file.read_text())
    plain = config.get("peft_type", "LORA") == "LORA" and not config.get("use_dora") and not config.get("use_rslora")
    if not plain or "r" not in config or "lora_alpha" not in config:
        raise ValueError(f"{config_file}: not a plain LoRA config with 'r' and 'lora_alpha' (as mPLUG-Owl trains)")
    state: dict[str, torch.Tensor] = {}
    halves: dict[str, set[str]] = {}
    unknown, ranks = [], []
    for key, value in _read_weights(weights).items():
        if (match := _LORA_KEY.match(key)) is None:
            unknown.append(key)
            continue
        state[f"{match['module']}.{match['ab']}.weight"] = value
        halves.setdefault(match["module"], set()).add(match["ab"])
        if (value.shape[0] if match["ab"] == "lora_A" else value.shape[-1]) != config["r"]:
            ranks.append(f"{key} {tuple(value.shape)}")
    if unknown or not state:
        raise ValueError(
            f"{weights}: {len(unknown)} keys are not LoRA weights of the LM's decoder layers "
            f"(base_model.model.language_model.model.layers.*.lora_A/B.weight): {sorted(unknown)[:8]}"
        )
    lone = sorted(m for m, ab in halves.items() if ab != {"lora_A", "lora_B"})
    untargeted = sorted(m for m in halves if not _targets(config.get("target_modules"), f"language_model.{m}"))
    if ranks or lone or untargeted:
        raise ValueError(
            f"{weights} does not fit {config_file.name} (r={config['r']}, target_modules="
            f"{config.get('target_modules')!r}): other ranks {ranks[:8]}, lone lora_A/lora_B {lone[:8]}, "
            f"modules not targeted {untargeted[:8]}; the two files do not belong together"
        )
    inner = tuple(sorted({m.split(".", 3)[3] for m in halves}))
    return MplugOwlLora(config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0), inner), state


def _targets(target_modules: str | list[str] | None, module: str) -> bool:
    """peft's rule: a string is a regex matched against the whole module name, a list a set of name suffixes."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module) is not None
    return any(module == t or module.endswith(f".{t}") for t in target_modules or [])
