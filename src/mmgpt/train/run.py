"""From a TrainConfig to a finished run: join the process group, load the model, train, leave the group.

What `mmgpt train` and `mmgpt pretrain` call; tests and notebooks call it too (``env`` is passed in, never read
from the process, so a test decides what a "rank" is).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.config import ConfigError
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.train.checkpoint import latest_checkpoint, list_checkpoints
from mmgpt.train.config import TrainConfig
from mmgpt.train.distributed import DistributedContext, init_distributed, shutdown
from mmgpt.train.trainer import Evaluator, Trainer, TrainResult


def load_base_model(
    spec: str, options: Mapping[str, Any] | None = None, *, init: str = "pretrained"
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """The model a run starts from (see ``TrainConfig.model`` / ``init``)."""
    options = dict(options or {})
    if init == "random":
        from mmgpt.data.tokenize import load_tokenizer
        from mmgpt.load import load_preset
        from mmgpt.model.build import build_model

        if "tokenizer" not in options:
            raise ConfigError("init: random builds a fresh model; name its tokenizer folder in model_options.tokenizer")
        unknown = sorted(set(options) - {"tokenizer"})
        if unknown:
            raise ConfigError(f"init: random takes only model_options.tokenizer, not {unknown}")
        return build_model(load_preset(spec).model, tokenizer=load_tokenizer(str(options["tokenizer"])))
    from mmgpt.load import load

    return load(spec, **options)


def load_run_model(
    cfg: TrainConfig, *, device: torch.device | None = None
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """The model a run trains: its base (``model``, ``model_options``, ``init``) with the config's architecture
    options applied (``gate_init``, ``vision_positions``, ``perceiver_latents``) - before any weight of the run is
    loaded, so a resumed run grows and changes the base the same way, then loads its weights. A base to quantize
    (``model_options.quantize``) is quantized straight onto ``device``, the run's."""
    from mmgpt.model.build import apply_architecture_options

    options = dict(cfg.model_options)
    if options.get("quantize") and device is not None:
        options.setdefault("device", str(device))
    model, tokenizer = load_base_model(cfg.model, options, init=cfg.init)
    apply_architecture_options(
        model,
        gate_init=cfg.gate_init,
        vision_positions=cfg.vision_positions,
        perceiver_latents=cfg.perceiver_latents,
        seed=cfg.seed,
    )
    return model, tokenizer


def run_evaluators(cfg: TrainConfig, evaluators: dict[str, Evaluator] | None) -> dict[str, Evaluator]:
    """The caller's evaluators, plus the generated world's when ``validation.world`` names one, plus one per
    published benchmark of ``validation.benchmarks``."""
    evaluators = dict(evaluators or {})
    if cfg.validation.world is not None:
        from mmgpt.world.evaluate import world_evaluator

        evaluators.setdefault("world", world_evaluator(cfg.validation.world, cfg.validation.world_scenes))
    if cfg.validation.benchmarks:
        from mmgpt.evaluate.validation import benchmark_evaluator

        for entry in cfg.validation.benchmarks:
            evaluators.setdefault(entry.name or entry.benchmark, benchmark_evaluator(entry))
    return evaluators


def prepare_resume(cfg: TrainConfig, resume: bool | str | None) -> Path | None:
    """The checkpoint to continue from. ``resume=True``: the latest of the run directory (none yet: start);
    a path: that checkpoint; ``False``/None with checkpoints already in the run directory is an error, so an
    earlier run is never overwritten by accident."""
    if isinstance(resume, str):
        if not Path(resume).is_dir():
            raise ConfigError(f"--resume {resume}: no such checkpoint folder")
        return Path(resume)
    if resume:
        return latest_checkpoint(cfg.run_dir)
    if list_checkpoints(cfg.run_dir):
        raise ConfigError(
            f"run directory {cfg.run_dir} already holds checkpoints; pass --resume to continue that run, "
            "or choose another run_dir"
        )
    return None


def train(
    cfg: TrainConfig,
    *,
    env: Mapping[str, str] | None = None,
    resume: bool | str | None = None,
    evaluators: dict[str, Evaluator] | None = None,
    progress_stream=None,
) -> TrainResult:
    checkpoint = prepare_resume(cfg, resume)
    ctx = init_distributed(env or {}, device=cfg.device)
    try:
        # The trainer lives in _fit's frame, so it and its DDP wrapper are gone before the group is (see shutdown).
        return _fit(cfg, ctx, checkpoint, resume=resume, evaluators=evaluators, progress_stream=progress_stream)
    except BaseException as error:
        if ctx.enabled:  # a failed run's frames hold its trainer: free them before the group goes too
            traceback.clear_frames(error.__traceback__)
        raise
    finally:
        shutdown(ctx)


def _fit(
    cfg: TrainConfig,
    ctx: DistributedContext,
    checkpoint: Path | None,
    *,
    resume: bool | str | None,
    evaluators: dict[str, Evaluator] | None,
    progress_stream,
) -> TrainResult:
    model, tokenizer = load_run_model(cfg, device=ctx.device)
    trainer = Trainer(cfg, model, tokenizer, ctx=ctx, evaluators=run_evaluators(cfg, evaluators))
    if checkpoint is not None or resume:
        trainer.resume(checkpoint)  # says which checkpoint it continued from (or that there was none yet)
    return trainer.fit(progress_stream=progress_stream)
