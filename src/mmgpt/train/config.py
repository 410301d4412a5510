"""The typed configuration of a training run (`mmgpt train CONFIG key=value ...`).

A run's YAML mirrors :class:`TrainConfig`. ``data`` (and ``validation.data``) may be written inline or as the
path / preset name of a data config; :func:`load_train_config` expands it, applies ``key=value`` overrides at
any depth (``optimizer.lr=1e-4``, ``data.batch_size=2``) and refuses unknown keys, naming the closest valid one.
The expanded config is saved in the run directory, so a run can always be read back and resumed as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmgpt.config import ConfigError, LoraConfig, Precision, closest, from_dict
from mmgpt.data.config import DataConfig, load_data_config
from mmgpt.data.styles import get_style
from mmgpt.model.contract import CROSS_ATTENTION, CROSS_ATTENTION_FF, GROUPS

# The reference trains weight decay only into the gated cross-attention blocks (under LoRA: their adapters).
REFERENCE_DECAY_GROUPS = [CROSS_ATTENTION, CROSS_ATTENTION_FF]


@dataclass
class OptimizerConfig:
    """AdamW with a warmup-then-decay schedule. The defaults are MultiModal-GPT's: its paper (reference.md
    section 4) and its reference training code, which decays only parameters of the gated cross-attention blocks
    (``weight_decay_groups``; under LoRA their adapters, not the LM's self-attention adapters) and warms up with
    transformers' cosine-with-warmup (the lr of the first step is 0).

    Weight decay applies to the matrices (LoRA A/B, linear weights) of ``weight_decay_groups`` (None: of every
    group); never to biases, norm scales, the tanh gates, the perceiver's latents or the token embeddings
    (decaying those pulls learned vectors to zero for no gain).
    """

    lr: float = 1e-5
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the schedule decays to lr * min_lr_ratio
    max_grad_norm: float | None = 1.0  # clipped once per optimiser step, after accumulation
    weight_decay_groups: list[str] | None = field(default_factory=lambda: list(REFERENCE_DECAY_GROUPS))

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ConfigError(f"optimizer.betas must be two numbers, got {list(self.betas)}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError("optimizer.warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        unknown = sorted(set(self.weight_decay_groups or ()) - set(GROUPS))
        if unknown:
            raise ConfigError(f"optimizer.weight_decay_groups: unknown group(s) {unknown}; groups: {', '.join(GROUPS)}")


@dataclass
class BenchmarkValidation:
    """A published benchmark as a validation metric (``mmgpt.evaluate.validation``), run as ``mmgpt eval`` runs it
    on its first ``limit`` items: ``benchmark`` (a name of ``mmgpt eval list``), ``data`` (its file), ``images`` (the
    image root), ``options`` (the reader's other arguments, e.g. ``annotations``), ``prompt`` (``chat``: the model's
    template; ``fewshot``: OpenFlamingo's text) and ``shots`` (examples from ``support``). Its figures are reported
    as ``{name}_{figure}`` (``name`` defaults to the benchmark): ``vqav2_vqa_accuracy``, ``pope_pope_f1``..."""

    benchmark: str
    data: str
    images: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    limit: int | None = 100
    shots: int = 0
    support: str | None = None
    support_images: str | None = None
    prompt: Literal["chat", "fewshot"] = "chat"
    template: str | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        from mmgpt.evaluate.benchmarks import BENCHMARKS

        if self.benchmark not in BENCHMARKS:
            raise ConfigError(
                f"benchmark {self.benchmark!r} is unknown{closest(self.benchmark, BENCHMARKS)}; known: "
                f"{', '.join(BENCHMARKS)}"
            )
        if self.shots < 0 or (self.shots and self.support is None):
            raise ConfigError(f"{self.benchmark}: shots={self.shots} needs shots >= 0 and, above 0, a support file")


@dataclass
class ValidationConfig:
    """Every ``every`` optimiser steps: the held-out loss over the first ``batches`` batches of ``data`` (the same
    batches each time) and, with ``world`` (a folder of ``mmgpt world generate``), the generation metrics of its
    first ``world_scenes`` held-out scenes (``world_colour``, ``world_language``, ...: see docs/world.md), and each
    of ``benchmarks`` (published benchmarks: ``vqav2_vqa_accuracy``, ...: see docs/evaluation.md).
    ``keep_best`` copies the checkpoint with the best ``metric`` (``mode`` min or max) to ``best/``."""

    data: DataConfig | None = None
    world: str | None = None
    world_scenes: int = 20
    benchmarks: list[BenchmarkValidation] = field(default_factory=list)
    every: int = 0  # 0: only at the end
    batches: int = 20
    metric: str = "val_loss"  # any key the validation reports
    mode: Literal["min", "max"] = "min"
    keep_best: bool = True


@dataclass
class CheckpointConfig:
    every: int = 100  # optimiser steps; 0: only at the end
    keep_last: int = 2


@dataclass
class LoggingConfig:
    every: int = 1  # optimiser steps between metric lines
    progress: bool = True  # a progress bar on a terminal (plain lines otherwise)
    tensorboard: bool = False
    wandb_project: str | None = None


@dataclass
class TrainConfig:
    """One training run. ``model``: anything ``mmgpt.load`` accepts - one of our model directories, or a preset
    name / model YAML with ``model_options`` giving the weights (``lm``, ``clip``, ``checkpoint``, ``dtype``...).
    With ``init: random`` the preset / YAML is built with random weights (pretraining from scratch) and
    ``model_options.tokenizer`` names the tokenizer folder.

    ``trainable``: "lora" (MultiModal-GPT: the base frozen, LoRA on ``lora``'s targets), "full" (everything but
    the vision encoder), "all" (the vision encoder too: pretraining a tiny model from scratch), or a preset of the
    model kind ("openflamingo": what OpenFlamingo pretraining trains - perceiver, gated blocks, input embeddings).
    ``train_groups``: parameter groups trained in full besides (e.g. ``[resampler]`` next to LoRA).

    Steps are optimiser steps; each takes ``gradient_accumulation`` micro-steps of one vision-language batch
    and (per ``data.language_ratio``) one language-only batch.
    """

    model: str
    data: DataConfig
    run_dir: str
    model_options: dict[str, Any] = field(default_factory=dict)
    init: Literal["pretrained", "random"] = "pretrained"
    # Set every tanh gate to this before training. Fresh gates are 0 so a pretrained LM starts unchanged; but a
    # ViT trained from scratch learns only through the gates (its gradients are scaled by tanh(gate)), so
    # pretraining from random weights needs them open (e.g. 1.0), or the model learns to ignore its images.
    gate_init: float | None = None
    # Before training, add a fixed 2D sine-cosine table with this norm per patch to the ViT's position embeddings
    # (VisionEncoder.add_position_table): for a from-scratch ViT whose patch embeddings outgrew its position
    # embeddings and so cannot tell where anything is. None: leave them.
    vision_positions: float | None = None
    # Before training, grow the perceiver to this many latents (Flamingo.grow_latents: its own kept, the new ones
    # drawn from ``seed``): for a base whose latents cannot hold every object of a busy image (`mmgpt world probe`
    # reads what they hold). None: leave them. A resumed run grows the base the same way, then loads its weights.
    perceiver_latents: int | None = None
    trainable: str = "lora"
    train_groups: list[str] = field(default_factory=list)
    # The prompt style the data is rendered in (data/styles); default the model's. A training stage may differ
    # from how the model chats (MiniGPT-4's stage 1: bare captions after the image, no prompt).
    prompt_style: str | None = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    max_steps: int | None = None  # default: ``epochs`` passes over the vision-language data
    epochs: float = 1.0
    gradient_accumulation: int = 1
    language_weight: float = 1.0  # loss = vision-language loss + language_weight * language-only loss
    precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when CUDA is available, else cpu
    seed: int = 0
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.gradient_accumulation < 1:
            raise ConfigError(f"gradient_accumulation must be >= 1, got {self.gradient_accumulation}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or null (from epochs), got {self.max_steps}")
        if self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.prompt_style is not None:
            get_style(self.prompt_style)  # an unknown style names the known ones
        unknown = sorted(set(self.train_groups) - set(GROUPS))
        if unknown:
            raise ConfigError(f"train_groups: unknown group(s) {unknown}; groups: {', '.join(GROUPS)}")
        if self.perceiver_latents is not None and self.trainable == "lora":
            raise ConfigError(
                f"perceiver_latents={self.perceiver_latents} adds latents that a LoRA run neither trains nor saves; "
                "grow them while pretraining (trainable: openflamingo, full or all)"
            )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["optimizer.lr=1e-4", "data.batch_size=2"]`` -> nested dict; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not key=value (e.g. optimizer.lr=1e-4)")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {part!r} is set to a value and also has keys")
        node[leaf] = yaml.safe_load(value)
    return nested


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _expand_data(value: Any, where: str, relative_to: Path) -> Any:
    """A data config given by path or preset name -> its dict (paths already resolved)."""
    if not isinstance(value, str):
        return value
    candidate = Path(value).expanduser()
    path = candidate if candidate.is_absolute() or not (relative_to / candidate).exists() else relative_to / candidate
    try:
        return dataclasses.asdict(load_data_config(path if path.exists() else value))
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def load_train_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a YAML file (or a dict), with ``key=value`` overrides; see the module docstring."""
    if isinstance(source, dict):
        raw, where, folder = dict(source), "config", Path.cwd()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        where, folder = str(path), path.parent.resolve()
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
        # Paths are relative to the config file, like a data config's: the run directory always, the model and
        # the model options (tokenizer, lm, clip, checkpoint...) when such a path exists.
        options = raw.get("model_options") if isinstance(raw.get("model_options"), dict) else {}
        for parent, key in [(raw, "model"), (raw, "run_dir"), *((options, k) for k in options)]:
            value = parent.get(key)
            relative = isinstance(value, str) and not Path(value).expanduser().is_absolute()
            if relative and (key == "run_dir" or (folder / value).exists()):
                parent[key] = str(folder / value)
    extra = parse_overrides(overrides or [])
    for key in extra:
        if key not in {f.name for f in dataclasses.fields(TrainConfig)}:
            names = [f.name for f in dataclasses.fields(TrainConfig)]
            raise ConfigError(f"override: unknown key {key!r}{closest(key, names)}; valid keys: {', '.join(names)}")
    # Data given by name is expanded first, so `data.batch_size=2` overrides a field of the loaded config.
    for key, parent in (("data", raw), ("data", raw.get("validation") or {})):
        if key in parent:
            parent[key] = _expand_data(parent[key], f"{where}: {key}", folder)
    for key, parent in (("data", extra), ("data", extra.get("validation") or {})):
        if isinstance(parent.get(key), str):
            parent[key] = _expand_data(parent[key], f"override {key}", Path.cwd())
    return from_dict(TrainConfig, _merge(raw, extra), where)


def save_train_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
