"""``mmgpt.load``: one call from downloaded weights (or a directory saved by mmgpt) to a ready model.

Sources::

    load("multimodal-gpt", lm=LLAMA_DIR, clip=CLIP_DIR, checkpoint="checkpoint.pt", lora="mmgpt_lora_v0_with_demo.pt")
    load("minigpt4-vicuna-7b", lm=VICUNA_DIR, eva="eva_vit_g.pth", qformer="blip2_pretrained_flant5xxl.pth",
         checkpoint="prerained_minigpt4_7b.pth")
    load("mplug-owl-llama-7b/")        # mPLUG-Owl's own HF directory
    load("exported-dir")               # a directory written by save_pretrained / `mmgpt export`

A preset (``src/mmgpt/presets/model/NAME.yaml``, or a path to such a YAML; ``mmgpt.presets``) is a ModelConfig,
optionally with ``base: OTHER``, ``lora:`` (a LoraConfig: the adapter the model needs) and ``release:`` (the
layout of its downloads, which picks the loader: ``RELEASES``). The preset gives the architecture; the files give
the weights, each read strictly by its loader in ``model/checkpoints/``. Paths may be hub ids (``org/name``;
files as ``org/name/file.pt``) where a hub is reachable.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt import presets
from mmgpt.config import DTYPES, ConfigError, LoraConfig, ModelConfig, closest, dtype_name, from_dict
from mmgpt.embedded import TINY_WORLD_NAME, tiny_world_path
from mmgpt.model.checkpoints import CONFIG_FILE, load_pretrained
from mmgpt.model.checkpoints.keys import local_file
from mmgpt.model.contract import VisionLanguageModel


@dataclass
class ModelPreset:
    """A model preset: the architecture, the adapter the model needs (``lora``), and the layout of its released
    files (``release``: the loader that reads the downloads)."""

    name: str
    model: ModelConfig
    lora: LoraConfig | None = None
    release: str = "openflamingo"


def preset_names() -> list[str]:
    return presets.preset_names("model")


def load_preset(name: str | Path) -> ModelPreset:
    """A shipped preset by name (``multimodal-gpt``), or a model YAML by path; unknown keys are errors."""
    data, stem = presets.read_model_preset(name)
    where = f"preset {stem}" if not Path(name).is_file() else str(name)
    lora = data.pop("lora", None)
    release = data.pop("release", "openflamingo")
    if release not in RELEASES:
        raise ConfigError(
            f"{where}: release {release!r} is not one of {', '.join(RELEASES)}{closest(release, RELEASES)}"
        )
    return ModelPreset(
        name=stem,
        model=from_dict(ModelConfig, data, where=where),
        lora=from_dict(LoraConfig, lora, where=f"{where}: lora") if lora is not None else None,
        release=release,
    )


# The layout of each release's downloads -> its loader ("module:function", imported when used):
# loader(preset, files, *, tokenizer, dtype, device, device_map) -> (model, tokenizer). ``lora_loaders`` read the
# release's own adapter files (a peft directory loads for every release).
RELEASES = {
    "openflamingo": "mmgpt.model.checkpoints.openflamingo:load_openflamingo_release",
    "minigpt4": "mmgpt.model.checkpoints.minigpt4_release:load_minigpt4_release",
    "mplug_owl": "mmgpt.model.checkpoints.mplug_owl_release:load_mplug_owl_release",
}
LORA_LOADERS = {
    "openflamingo": "mmgpt.model.checkpoints.multimodal_gpt_lora:load_multimodal_gpt_lora",
    "mplug_owl": "mmgpt.model.checkpoints.mplug_owl_release:load_mplug_owl_lora",
}
# Key prefixes (inside peft's ``base_model.model.``) of adapters trained with a release's own scripts, which name
# the LM by the release's attribute: such an adapter is the release's, whatever the model was loaded from.
ORIGINAL_LORA_PREFIXES = {"mplug_owl": "language_model."}
# HF directories of releases that ``load(DIR)`` recognises by their config.json's model_type -> preset.
RELEASE_DIRECTORIES = {"mplug-owl": "mplug-owl-llama-7b"}


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def load(
    source: str | Path,
    *,
    lm: str | Path | None = None,
    clip: str | Path | None = None,
    checkpoint: str | Path | None = None,
    eva: str | Path | None = None,
    qformer: str | Path | None = None,
    lora: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    merge_lora: bool = False,
    quantize: str | None = None,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """Build a ready model (eval mode, frozen) and its tokenizer.

    ``source``: ``"tiny-world"`` (the embedded default, shipped pretrained); a directory saved by mmgpt
    (self-contained; ``lora`` may add an adapter); a release's own HF directory (mPLUG-Owl's); or a preset name or
    model YAML with the downloads its release needs (docs/weights.md):

    - OpenFlamingo / MultiModal-GPT: ``lm`` (the LM's HF directory), ``clip`` (a HF CLIP directory),
      ``checkpoint`` (OpenFlamingo's ``checkpoint.pt``), and ``lora`` (MultiModal-GPT's LoRA ``.pt``) for
      ``multimodal-gpt``;
    - MiniGPT-4: ``lm`` (Vicuna), ``eva`` (``eva_vit_g.pth``), ``qformer`` (``blip2_pretrained_flant5xxl.pth``;
      not for the LLaMA-2 release) and ``checkpoint`` (the MiniGPT-4 ``.pth``);
    - mPLUG-Owl: ``checkpoint`` (its HF directory).

    ``lora``: an adapter - a peft directory (ours, or one trained with a release's own scripts) or a release's
    file. ``tokenizer``: another tokenizer folder than the LM's. ``dtype``: float32 / bfloat16 / float16 (every
    parameter ends in it). ``device``: where the model goes (weights are loaded straight there); ``device_map``:
    instead, spread the LM over several GPUs (``"auto"``; needs accelerate). ``merge_lora``: fold the adapter into
    the weights (faster; no adapter left). ``quantize``: ``"int8"`` or ``"nf4"``, the language model's linear layers
    in 8 or 4 bits (bitsandbytes; ``model/quantize.py``), quantized one by one as they move to ``device``.
    """
    dtype = dtype_name(dtype)
    if device_map is not None and torch.device(device).type != "cpu":
        raise ValueError(f"pass device={device!r} or device_map={device_map!r}, not both")
    if quantize is not None:
        _check_quantize(quantize, device_map=device_map, merge_lora=merge_lora)
    read_on = "cpu" if quantize else device  # a model to quantize is read into CPU memory first
    files = {"lm": lm, "clip": clip, "checkpoint": checkpoint, "eva": eva, "qformer": qformer}
    given = [f"{name}=" for name, value in files.items() if value is not None]
    saved = Path(source)
    if str(source) == TINY_WORLD_NAME and not given:
        saved = tiny_world_path()  # the one preset whose weights ship with the package (the embedded default)
    release = "openflamingo"
    if saved.is_dir() and (saved / CONFIG_FILE).is_file():
        if given:
            raise ValueError(f"{saved} is self-contained: drop {', '.join(given)}")
        model, tok = load_pretrained(saved, dtype=dtype, device=read_on, device_map=device_map)
        adapter = None
    else:
        if saved.is_dir():
            preset_name = _release_directory(saved)
            if given:
                raise ValueError(f"{saved} is a release directory and holds every weight: drop {', '.join(given)}")
            source, files["checkpoint"] = preset_name, saved
        preset = load_preset(source)
        release, adapter = preset.release, preset.lora
        model, tok = _resolve(RELEASES[release])(
            preset, {**files, "lora": lora}, tokenizer=tokenizer, dtype=dtype, device=read_on, device_map=device_map
        )
    if quantize is not None:
        from mmgpt.model.quantize import quantize_language_model

        model.to(DTYPES[dtype or model.config.dtype])  # the weights are quantized from the dtype the model runs in
        quantize_language_model(model, quantize, device=device)
        model.to(device)
    if lora is not None:
        _load_lora(model, lora, adapter, release)
    if merge_lora and lora is not None:
        from mmgpt.model.lora import merge_lora as merge

        merge(model)
    # peft keeps adapters in fp32 over a bf16/fp16 base; a model loaded "in bf16" is bf16 throughout.
    model.to(DTYPES[dtype or model.config.dtype])
    return model.eval(), tok


def _check_quantize(quantize: str, *, device_map: str | dict | None, merge_lora: bool) -> None:
    from mmgpt.model.quantize import check_kind

    check_kind(quantize)  # before any weight is read
    if device_map is not None:
        raise ValueError(f"quantize={quantize!r} puts the model on device=, one device: drop device_map={device_map!r}")
    if merge_lora:
        raise ValueError("merge_lora folds the adapter into the weights, which quantized layers cannot take: drop one")


def _release_directory(path: Path) -> str:
    """The preset of a release's own HF directory (by its config.json), or an error saying what ``path`` is not."""
    config = path / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type in RELEASE_DIRECTORIES:
        return RELEASE_DIRECTORIES[model_type]
    raise FileNotFoundError(
        f"{path} is not a directory saved by mmgpt (no {CONFIG_FILE}) nor a release directory mmgpt reads "
        f"(config.json model_type in {sorted(RELEASE_DIRECTORIES)}); to build from downloaded weights pass a preset "
        f"name ({', '.join(preset_names())}) with its files (docs/weights.md)"
    )


def _load_lora(model: VisionLanguageModel, lora: str | Path, cfg: LoraConfig | None, release: str) -> None:
    """A peft adapter directory (ours), else the release's own adapter format."""
    from mmgpt.model.lora import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, load_adapter, read_adapter

    path = Path(lora)
    if path.is_dir() and (path / ADAPTER_WEIGHTS_FILE).is_file():
        try:
            _, state = read_adapter(path)
        except ValueError:
            pass  # keyed for another wrapper: the release's own layout
        else:
            if not any(key.startswith(ORIGINAL_LORA_PREFIXES["mplug_owl"]) for key in state):
                load_adapter(model, path)
                return
            release = "mplug_owl"  # trained with mPLUG-Owl's own scripts (peft over its whole model)
    if path.is_dir() and (path / "adapter_model.bin").is_file():
        release = "mplug_owl"  # the one release whose own adapters are peft directories with a pickled file
    if release not in LORA_LOADERS:
        if path.is_dir() and not (path / ADAPTER_CONFIG_FILE).is_file():
            raise FileNotFoundError(f"lora={path} is a directory without {ADAPTER_CONFIG_FILE}: not a peft adapter")
        raise ValueError(f"lora={path}: not a peft adapter directory mmgpt reads, and {release} has no other format")
    target = path if path.is_dir() else local_file(lora, what="LoRA file")
    _resolve(LORA_LOADERS[release])(model, target, cfg)


class _CallableModule(types.ModuleType):
    """``mmgpt.load`` is both this module and the function: when the module is imported before ``mmgpt.load`` is
    first used, Python binds the package attribute to the module, and calling it must still load a model."""

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
        return load(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
