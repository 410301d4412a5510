"""``mmgpt.load``: one call from downloaded weights (or a directory saved by mmgpt) to a ready model.

Two sources::

    load("multimodal-gpt", lm=LLAMA_DIR, clip=CLIP_DIR, checkpoint="checkpoint.pt", lora="mmgpt_lora_v0_with_demo.pt")
    load("exported-dir")               # a directory written by save_pretrained / `mmgpt export`

A preset (``src/mmgpt/presets/model/NAME.yaml``, or a path to such a YAML) is a ModelConfig, optionally with
``base: OTHER`` (start from another preset) and ``lora:`` (a LoraConfig: the adapter the model needs). The preset
gives the architecture and the media-mask behaviour; the directories give the weights. Paths may be hub ids
(``org/name``; files as ``org/name/file.pt``) where a hub is reachable.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoConfig, PreTrainedTokenizerBase

from mmgpt.config import DTYPES, ConfigError, LoraConfig, ModelConfig, closest, dtype_name, from_dict
from mmgpt.embedded import TINY_WORLD_NAME, tiny_world_path
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints import CONFIG_FILE, load_multimodal_gpt_lora, load_openflamingo_checkpoint, load_pretrained
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.model.language import hf_source

PRESETS_DIR = Path(__file__).parent / "presets" / "model"


@dataclass
class ModelPreset:
    name: str
    model: ModelConfig
    lora: LoraConfig | None = None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _preset_file(name: str | Path) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    file = PRESETS_DIR / f"{name}.yaml"
    if not file.is_file():
        names = preset_names()
        raise ConfigError(
            f"unknown model preset {str(name)!r}{closest(str(name), names)}; presets: {', '.join(names)} "
            "(or pass the path of a model YAML, or of a directory saved by mmgpt)"
        )
    return file


def _raw_preset(name: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    file = _preset_file(name)
    if str(file) in seen:
        raise ConfigError(f"{file}: 'base' presets form a cycle: {' -> '.join((*seen, str(file)))}")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    return _merge(_raw_preset(base, (*seen, str(file))), data) if base is not None else data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested sections merge key by key; other values (lists, lm.hf_config's numbers) replace the base's."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict) and key != "hf_config"
        out[key] = _merge(out[key], value) if nested else value
    return out


def load_preset(name: str | Path) -> ModelPreset:
    """A shipped preset by name (``multimodal-gpt``), or a model YAML by path; unknown keys are errors."""
    file = _preset_file(name)
    data = _raw_preset(name)
    lora = data.pop("lora", None)
    return ModelPreset(
        name=file.stem,
        model=from_dict(ModelConfig, data, where=str(file)),
        lora=from_dict(LoraConfig, lora, where=f"{file}: lora") if lora is not None else None,
    )


def load(
    source: str | Path,
    *,
    lm: str | Path | None = None,
    clip: str | Path | None = None,
    checkpoint: str | Path | None = None,
    lora: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    merge_lora: bool = False,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """Build a ready model (eval mode, frozen) and its tokenizer.

    ``source``: ``"tiny-world"`` (the embedded default, shipped pretrained),
    or a preset name or model YAML (then ``lm``, ``clip`` and ``checkpoint`` are required, and ``lora``
    when the preset names an adapter), or a directory saved by mmgpt (self-contained; ``lora`` may add an adapter).
    ``lm``: the LM's HF directory (its tokenizer too, unless ``tokenizer`` is given); ``clip``: a HF CLIP (vision)
    directory; ``checkpoint``: OpenFlamingo's ``checkpoint.pt``; ``lora``: MultiModal-GPT's LoRA ``.pt`` or a peft
    adapter directory. ``dtype``: float32 / bfloat16 / float16 (every parameter ends in it). ``device``: where the
    model goes (weights are loaded straight there); ``device_map``: instead, spread the LM over several GPUs
    (``"auto"``; needs accelerate). ``merge_lora``: fold the adapter into the weights (faster; no adapter left).
    """
    dtype = dtype_name(dtype)
    if device_map is not None and torch.device(device).type != "cpu":
        raise ValueError(f"pass device={device!r} or device_map={device_map!r}, not both")
    saved = Path(source)
    if str(source) == TINY_WORLD_NAME and not (lm or clip or checkpoint):
        saved = tiny_world_path()  # the one preset whose weights ship with the package (the embedded default)
    if saved.is_dir():
        if not (saved / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{saved} is not a directory saved by mmgpt (no {CONFIG_FILE}); to build from downloaded weights "
                f"pass a preset name ({', '.join(preset_names())}) with lm=, clip= and checkpoint="
            )
        extra = [name for name, value in (("lm", lm), ("clip", clip), ("checkpoint", checkpoint)) if value]
        if extra:
            raise ValueError(f"{saved} is self-contained: drop {', '.join(f'{n}=' for n in extra)}")
        model, tok = load_pretrained(saved, dtype=dtype, device=device, device_map=device_map)
        adapter = None
    else:
        preset = load_preset(source)
        adapter = preset.lora
        model, tok = _from_downloads(preset, lm=lm, clip=clip, checkpoint=checkpoint, lora=lora, tokenizer=tokenizer,
                                     dtype=dtype, device=device, device_map=device_map)  # fmt: skip
    if lora is not None:
        _load_lora(model, lora, adapter)
    if merge_lora and lora is not None:
        from mmgpt.model.lora import merge_lora as merge

        merge(model)
    # peft keeps adapters in fp32 over a bf16/fp16 base; a model loaded "in bf16" is bf16 throughout.
    model.to(DTYPES[dtype or model.config.dtype])
    return model.eval(), tok


def _from_downloads(
    preset: ModelPreset,
    *,
    lm: str | Path | None,
    clip: str | Path | None,
    checkpoint: str | Path | None,
    lora: str | Path | None,
    tokenizer: str | Path | None,
    dtype: str | None,
    device: str | torch.device,
    device_map: str | dict | None,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    cfg = preset.model
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
    checkpoint = _local_file(checkpoint, what="checkpoint")
    cfg = dataclasses.replace(
        cfg,
        lm=dataclasses.replace(cfg.lm, path=str(lm), tokenizer=str(tokenizer) if tokenizer else None),
        vision=dataclasses.replace(cfg.vision, path=str(clip)),
        dtype=dtype or cfg.dtype,
    )
    _check_lm_matches(preset, str(lm))
    model, tok = build_model(cfg, device=device, device_map=device_map, init_weights=False)
    if model.vision_encoder.width != preset.model.vision.width:
        raise ValueError(
            f"{clip}: the vision encoder is {model.vision_encoder.width} wide but preset {preset.name!r} expects "
            f"{preset.model.vision.width} (CLIP ViT-L/14); point clip= at openai/clip-vit-large-patch14"
        )
    load_openflamingo_checkpoint(model, checkpoint)  # fills the perceiver and the blocks, which are uninitialised
    return model, tok


def _check_lm_matches(preset: ModelPreset, lm: str) -> None:
    """The LM directory must have the preset's depth and width: the checkpoint's blocks sit at fixed layers."""
    hf = dict(preset.model.lm.hf_config or {})
    if "model_type" not in hf:
        return
    expected = AutoConfig.for_model(hf.pop("model_type"), **hf)
    if not Path(lm).is_dir():
        return  # a hub id; the checkpoint's key and shape checks still apply
    try:
        found = AutoConfig.from_pretrained(lm)
    except ValueError:
        return  # build_language_model explains unknown model types
    for attr in ("num_hidden_layers", "hidden_size"):
        want, got = getattr(expected, attr, None), getattr(found, attr, None)
        if want is not None and got is not None and want != got:
            raise ValueError(
                f"{lm}: {attr}={got} but preset {preset.name!r} is built on an LM with {attr}={want}; "
                "pass the language model the preset names (see its YAML)"
            )


def _local_file(path: str | Path, *, what: str) -> Path:
    """A local file, or ``org/name/file`` fetched from the hub where one is reachable."""
    local = Path(path)
    if local.is_file():
        return local
    parts = str(path).split("/")
    if local.exists() or len(parts) < 3:
        raise FileNotFoundError(f"{what} {path} does not exist; pass the path of the downloaded file")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))


def _load_lora(model: VisionLanguageModel, lora: str | Path, cfg: LoraConfig | None) -> None:
    from mmgpt.model.lora import ADAPTER_CONFIG_FILE, load_adapter

    path = Path(lora)
    if path.is_dir():
        if not (path / ADAPTER_CONFIG_FILE).is_file():
            raise FileNotFoundError(f"lora={path} is a directory without {ADAPTER_CONFIG_FILE}: not a peft adapter")
        load_adapter(model, path)
        return
    load_multimodal_gpt_lora(model, _local_file(lora, what="LoRA file"), cfg)


class _CallableModule(types.ModuleType):
    """``mmgpt.load`` is both this module and the function: when the module is imported before ``mmgpt.load`` is
    first used, Python binds the package attribute to the module, and calling it must still load a model."""

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
        return load(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
