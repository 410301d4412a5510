"""Named presets shipped with the package - ``model/*.yaml`` (a ModelConfig, optionally with ``base:``, ``lora:`` and
``release:``) and ``data/*.yaml`` (a DataConfig) - and the one place that finds and reads them.

A preset supplies numbers and names only: the architecture of a released model and the recipe's data mix. A model
preset may start from another (``base: openflamingo-9b-v1``; nested sections merge key by key), name the adapter the
model needs (``lora:``) and the layout its released files come in (``release:``, which picks the loader in
``mmgpt.load``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from mmgpt.config import ConfigError, closest

Kind = Literal["model", "data"]


def preset_names(kind: Kind) -> list[str]:
    folder = resources.files("mmgpt.presets").joinpath(kind)
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def preset_text(kind: Kind, name: str) -> str | None:
    """The YAML text of the shipped ``kind`` preset ``name``, or None when there is none."""
    if name not in preset_names(kind):
        return None
    return resources.files("mmgpt.presets").joinpath(kind, f"{name}.yaml").read_text()


def unknown_preset(kind: Kind, name: str, hint: str = "") -> ConfigError:
    names = preset_names(kind)
    return ConfigError(f"unknown {kind} preset {name!r}{closest(name, names)}; presets: {', '.join(names)}{hint}")


def read_yaml_mapping(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    return data


def read_model_preset(name: str | Path, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """The merged mapping of a model preset (by name) or a model YAML (by path), following ``base:``; and its name."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, where, stem = path.read_text(), str(path), path.stem
    else:
        text = preset_text("model", str(name))
        if text is None:
            raise unknown_preset(
                "model", str(name), " (or pass the path of a model YAML, or of a directory saved by mmgpt)"
            )
        where, stem = f"preset {name}", str(name)
    if where in seen:
        raise ConfigError(f"{where}: 'base' presets form a cycle: {' -> '.join((*seen, where))}")
    data = read_yaml_mapping(text, where)
    base = data.pop("base", None)
    if base is not None:
        data = merge(read_model_preset(base, (*seen, where))[0], data)
    return data, stem


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested sections merge key by key; other values (lists, lm.hf_config's numbers) replace the base's."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict) and key != "hf_config"
        out[key] = merge(out[key], value) if nested else value
    return out
