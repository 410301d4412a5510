"""DataConfig: what to read, how much of each source, and how to tokenise it. YAML in and out.

The YAML mirrors the dataclasses key for key. Unknown keys are errors that name the closest valid key,
wrong types are errors that name the key and the value; source ``options`` are checked by the source's
format (``sources/``). Relative paths are resolved against ``root``: for a YAML file that leaves ``root``
out, the file's own folder; for a shipped preset, the data root the user passes (``--root``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmgpt import presets
from mmgpt.config import ConfigError, closest, from_dict
from mmgpt.data.images import CLIP_SIZE, DEFAULT_MAX_PIXELS
from mmgpt.data.sources import FORMATS
from mmgpt.data.sources.base import SourceConfig
from mmgpt.data.tokenize import DEFAULT_MAX_LENGTH


@dataclass
class DataConfig:
    """The data of a run. Each training step takes one vision-language batch (``batch_size`` samples) and,
    on a ``language_ratio`` share of the steps (1.0: every step, the paper), one language-only batch
    (``language_batch_size`` samples) from an endless, reshuffled language stream."""

    vision_language: list[SourceConfig] = field(default_factory=list)
    language: list[SourceConfig] = field(default_factory=list)
    tokenizer: str | None = None
    root: str | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    seed: int = 0
    language_ratio: float = 1.0
    batch_size: int = 1
    language_batch_size: int = 1
    image_size: int = CLIP_SIZE
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.language_ratio <= 1.0:
            raise ConfigError(
                f"language_ratio must be in [0, 1] (share of steps that also take a language-only batch), "
                f"got {self.language_ratio}; for more language data raise language_batch_size"
            )
        for key in ("batch_size", "language_batch_size", "image_size", "max_image_pixels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ConfigError(f"two sources are named {source.name!r}; names identify sources in reports")
            seen.add(source.name)

    @property
    def sources(self) -> list[SourceConfig]:
        return [*self.vision_language, *self.language]

    def resolve(self, path: str) -> Path:
        """An absolute path for ``path``: as is when absolute, else under ``root``."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            return candidate
        if self.root is None:
            raise ConfigError(
                f"{path!r} is relative but no data root is set; set 'root:' in the YAML or pass --root DIR"
            )
        return Path(self.root).expanduser() / candidate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    return presets.preset_names("data")


def load_data_config(config: str | Path) -> DataConfig:
    """Load a YAML file, or a shipped preset by name (``multimodal-gpt``); validates source options too."""
    path = Path(config).expanduser()
    text = presets.preset_text("data", str(config)) if not path.exists() and path.suffix == "" else None
    is_preset = text is not None
    if is_preset:
        where = f"preset {config}"
    elif path.is_file():
        text = path.read_text()
        where = str(path)
    else:
        names = preset_names()
        raise ConfigError(
            f"{config}: no such file and no such preset{closest(str(config), names)}; presets: {', '.join(names)}"
        )
    cfg: DataConfig = from_dict(DataConfig, presets.read_yaml_mapping(text, where), where)
    if not is_preset:
        # Paths in a user's file (data root, tokenizer) are relative to that file unless absolute.
        cfg.root = str(path.parent.resolve() / Path(cfg.root or ".").expanduser())
        if cfg.tokenizer is not None:
            cfg.tokenizer = str(path.parent.resolve() / Path(cfg.tokenizer).expanduser())
    validate_sources(cfg, where=where)
    return cfg


def validate_sources(cfg: DataConfig, *, where: str = "data config") -> None:
    """Check every source's format name and options against the format's own option dataclass."""
    for group in ("vision_language", "language"):
        for i, source in enumerate(getattr(cfg, group)):
            at = f"{where}: {group}[{i}] ({source.name})"
            if source.format not in FORMATS:
                raise ConfigError(
                    f"{at}: unknown format {source.format!r}{closest(source.format, FORMATS)}; "
                    f"formats: {', '.join(sorted(FORMATS))}"
                )
            FORMATS[source.format].parse_options(source.options, where=f"{at}.options")


def dump_data_config(cfg: DataConfig) -> str:
    """YAML text that :func:`load_data_config` reads back to an equal config."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
