"""The training loop: joint vision-language + language-only instruction tuning (or pretraining), one process
or many, resumable at any saved step.

One optimiser step = ``gradient_accumulation`` micro-steps; each micro-step takes one vision-language batch
and (on ``data.language_ratio`` of them) one language-only batch, sums their losses (the language-only one
weighted by ``language_weight``) and back-propagates once. Gradients are clipped at the optimiser step only.
At the end the samples the data left out (rows skipped while reading, samples dropped by tokenisation, broken
images of ``on_error: skip`` sources) are printed per source and written to metrics.jsonl as ``{"skipped": ...}``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.config import AUTOCAST
from mmgpt.data.collate import Batch
from mmgpt.data.config import DataConfig
from mmgpt.data.loader import PairedBatch, PairedBatches, build_training_batches, merge_skipped
from mmgpt.data.sources import SourceStats
from mmgpt.model.contract import Evaluator, VisionLanguageModel
from mmgpt.train.checkpoint import (
    TrainerState,
    capture_rng,
    keep_best,
    latest_checkpoint,
    load_trainer_state,
    read_weights,
    restore_rng,
    save_checkpoint,
    write_weights,
)
from mmgpt.train.config import TrainConfig, save_train_config
from mmgpt.train.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    gather_objects,
    maybe_no_sync,
    wrap_model,
)
from mmgpt.train.loss import causal_lm_loss
from mmgpt.train.optimizer import build_optimizer, make_trainable
from mmgpt.train.progress import Progress
from mmgpt.train.schedule import build_scheduler


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, out of memory); the message says what happened and what to do."""


@dataclass
class TrainResult:
    steps: int
    output: Path  # the final adapter (lora) or model directory
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: dict[str, int] = field(default_factory=dict)


def total_steps(cfg: TrainConfig, batches: PairedBatches) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * batches.steps_per_epoch / cfg.gradient_accumulation))


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST[precision])


def batch_loss(model: torch.nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    batch = batch.to(device, non_blocking=True)
    logits = model(
        batch.input_ids, images=batch.media, image_counts=batch.image_counts, attention_mask=batch.attention_mask
    ).logits
    return causal_lm_loss(logits, batch.labels)


def _describe(paired: list[PairedBatch]) -> str:
    origins = [o for p in paired for b in (p.vision_language, p.language) if b is not None for o in b.origins]
    return ", ".join(origins[:16]) or "(unknown samples)"


class Trainer:
    """Build with a model of the contract and its tokenizer; :meth:`fit` runs to ``total_steps``.

    The model arrives as it should train (architecture options are applied where it is built: ``run.py``).
    ``evaluators`` (e.g. the generated world's accuracy, which ``run.py`` makes from ``validation.world``) run with
    each validation on the main rank; their figures join the validation record and may be the
    ``validation.metric`` that picks the best checkpoint.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: VisionLanguageModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        ctx: DistributedContext | None = None,
        evaluators: dict[str, Evaluator] | None = None,
        batches: PairedBatches | None = None,
    ) -> None:
        """``batches`` replaces the batches of ``cfg.data`` (benchmarks feed fixed synthetic batches)."""
        self.cfg, self.tokenizer = cfg, tokenizer
        self.ctx = ctx or DistributedContext(device=model.device)
        self.evaluators = dict(evaluators or {})
        self.run_dir = Path(cfg.run_dir)
        torch.manual_seed(cfg.seed)  # the same fresh LoRA weights on every rank and in every attempt
        self.trainable = make_trainable(model, cfg.trainable, cfg.lora, also=tuple(cfg.train_groups))
        model.to(self.ctx.device)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing = True  # what a model runs outside its LM (Flamingo's gated blocks)
            lm = model.language_model  # transformers 5.x renamed gradient_checkpointing_enable
            if hasattr(lm, "activation_checkpointing_enable"):
                lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = model
        self.wrapped = wrap_model(model, self.ctx)
        self.read_stats: dict[str, SourceStats] = {}
        self.batches = batches or self._batches(cfg.data, stats=self.read_stats)
        self.total = total_steps(cfg, self.batches)
        self.optimizer = build_optimizer(model, cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, total_steps=self.total, cfg=cfg.optimizer)
        self.scaler = torch.amp.GradScaler(self.ctx.device.type) if cfg.precision == "fp16" else None
        self.step, self.best = 0, None
        self._validation: tuple[PairedBatches, dict[str, Any]] | None = None
        self.last_good: Path | None = None
        self.resume_note: str | None = None

    def _batches(self, data: DataConfig, stats: dict[str, SourceStats] | None = None) -> PairedBatches:
        """The batches of ``data`` for this rank, prepared for this model: its prompt format, image transform
        and padding id."""
        return build_training_batches(
            data,
            self.tokenizer,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            image_transform=self.model.image_transform(max_pixels=data.max_image_pixels),
            fmt=replace(self.model.prompt_format, style=self.cfg.prompt_style or self.model.prompt_format.style),
            pad_id=self.model.special.pad,
            stats=stats,
        )

    # ---------------------------------------------------------------- state
    def resume(self, checkpoint: str | Path | None = None) -> int:
        """Continue from ``checkpoint`` (default: the latest in the run directory). Returns the step."""
        folder = Path(checkpoint) if checkpoint is not None else latest_checkpoint(self.run_dir)
        if folder is None:
            self.resume_note = f"resume: no checkpoint in {self.run_dir} yet; starting at step 0"
            return 0
        state = load_trainer_state(folder)
        if len(state.ranks) != self.ctx.world_size:
            raise ValueError(
                f"{folder} was saved by {len(state.ranks)} processes; resume it with the same number "
                f"(got {self.ctx.world_size}), since each process's data position is its own"
            )
        read_weights(self.model, folder, lora=self.cfg.trainable == "lora")
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if self.scaler is not None and state.scaler is not None:
            self.scaler.load_state_dict(state.scaler)
        mine = state.ranks[self.ctx.rank]
        self.batches.load_state_dict(mine["data"])
        restore_rng(mine["rng"])
        self.step, self.best, self.last_good = state.step, state.best, folder
        self.resume_note = f"resumed from {folder} at step {self.step} of {self.total}"
        return self.step

    def _checkpoint(self, data_state: dict[str, Any], metrics: dict[str, float]) -> Path | None:
        ranks = gather_objects({"data": data_state, "rng": capture_rng()}, self.ctx)
        path = None
        if self.ctx.is_main:
            state = TrainerState(
                step=self.step,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=None if self.scaler is None else self.scaler.state_dict(),
                ranks=ranks,
                metrics=metrics,
                best=self.best,
            )
            path = save_checkpoint(
                self.run_dir,
                self.model,
                state,
                lora=self.cfg.trainable == "lora",
                keep_last=self.cfg.checkpoint.keep_last,
            )
            self.last_good = path
        barrier(self.ctx)
        return path

    # ---------------------------------------------------------------- steps
    def _micro_step(self, paired: PairedBatch, skip_sync: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self.ctx.device
        with maybe_no_sync(self.wrapped, skip_sync), _autocast(self.cfg.precision, device):
            loss_vl = batch_loss(self.wrapped, paired.vision_language, device)
            loss_lo = batch_loss(self.wrapped, paired.language, device) if paired.language is not None else None
            loss = loss_vl if loss_lo is None else loss_vl + self.cfg.language_weight * loss_lo
            loss = loss / self.cfg.gradient_accumulation
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        return loss_vl.detach(), None if loss_lo is None else loss_lo.detach()

    def train_step(self, stream: Iterator[PairedBatch]) -> tuple[dict[str, float], dict[str, Any]]:
        """One optimiser step; returns its metrics and the data position after it."""
        accumulation = self.cfg.gradient_accumulation
        # [vl loss sum, vl count, lo loss sum, lo count, samples, trained tokens] summed over micro-steps and ranks
        sums = torch.zeros(6, dtype=torch.float64)
        paired_batches = []
        for micro in range(accumulation):
            paired = next(stream)
            paired_batches.append(paired)
            loss_vl, loss_lo = self._micro_step(paired, skip_sync=micro < accumulation - 1)
            sums[0] += loss_vl.item()
            sums[1] += 1
            sums[4] += len(paired.vision_language)
            sums[5] += paired.vision_language.num_trained_tokens
            if loss_lo is not None:
                sums[2] += loss_lo.item()
                sums[3] += 1
                sums[4] += len(paired.language)
                sums[5] += paired.language.num_trained_tokens
        sums = all_reduce_sum(sums, self.ctx)
        if not (math.isfinite(sums[0]) and math.isfinite(sums[2])):
            where = f"; the last good checkpoint is {self.last_good}" if self.last_good else ""
            raise TrainingError(
                f"non-finite loss at step {self.step + 1} (vision-language {sums[0] / max(sums[1], 1):.4g}, "
                f"language-only {sums[2] / max(sums[3], 1):.4g}) on samples {_describe(paired_batches)}{where}; "
                "check those samples, lower optimizer.lr, or use bf16 instead of fp16"
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.optimizer.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics = {
            "step": self.step,
            "loss_vl": float(sums[0] / sums[1]),
            "loss_lo": float(sums[2] / sums[3]) if sums[3] else None,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "samples": int(sums[4]),
            "tokens": int(sums[5]),
        }
        metrics["loss"] = metrics["loss_vl"] + self.cfg.language_weight * (metrics["loss_lo"] or 0.0)
        return metrics, paired_batches[-1].state

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean held-out losses over the same ``validation.batches`` steps each time, plus the evaluators."""
        vcfg = self.cfg.validation
        results: dict[str, float] = {}
        if vcfg.data is not None:
            if self._validation is None:  # read the held-out files once; each validation rewinds to the start
                batches = self._batches(vcfg.data)
                self._validation = (batches, batches.state_dict())
            batches, start = self._validation
            batches.load_state_dict(start)
            self.model.eval()
            sums = torch.zeros(4, dtype=torch.float64)
            stream = iter(batches)
            for _ in range(vcfg.batches):
                paired = next(stream)
                with _autocast(self.cfg.precision, self.ctx.device):
                    sums[0] += batch_loss(self.model, paired.vision_language, self.ctx.device).item()
                    sums[1] += 1
                    if paired.language is not None:
                        sums[2] += batch_loss(self.model, paired.language, self.ctx.device).item()
                        sums[3] += 1
            self.model.train()
            sums = all_reduce_sum(sums, self.ctx)
            results["val_loss_vl"] = float(sums[0] / sums[1])
            if sums[3]:
                results["val_loss_lo"] = float(sums[2] / sums[3])
            results["val_loss"] = results["val_loss_vl"] + self.cfg.language_weight * results.get("val_loss_lo", 0.0)
        if self.evaluators and self.ctx.is_main:
            self.model.eval()
            for name, evaluator in self.evaluators.items():
                results.update({f"{name}_{k}": v for k, v in evaluator(self.model, self.tokenizer).items()})
            self.model.train()
        return results

    # ---------------------------------------------------------------- the run
    def _due(self, every: int) -> bool:
        return bool(every) and self.step % every == 0

    def _improves(self, metric: float | None) -> bool:
        """Whether ``metric`` beats the best so far; the main rank decides (evaluators run only there) and every
        rank follows, so they all take part in saving the checkpoint."""
        mode = self.cfg.validation.mode
        better = metric is not None and (
            self.best is None or (metric < self.best if mode == "min" else metric > self.best)
        )
        flag = all_reduce_sum(torch.tensor([float(better and self.ctx.is_main)]), self.ctx)
        if better:
            self.best = metric
        return bool(flag[0] > 0)

    def fit(self, *, progress_stream=None) -> TrainResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.ctx.is_main:
            save_train_config(cfg, self.run_dir / "config.yaml")
        progress = Progress(
            self.run_dir,
            cfg.logging,
            total_steps=self.total,
            start_step=self.step,
            enabled=self.ctx.is_main,
            stream=progress_stream,
        )
        progress.message(
            f"training {cfg.trainable}: "
            + ", ".join(f"{k} {v:,}" for k, v in self.trainable.items() if v)
            + f" trainable parameters; {self.total} steps of {cfg.gradient_accumulation} micro-steps"
            + f" x {self.ctx.world_size} process(es)"
        )
        if self.resume_note:
            progress.message(self.resume_note)
        self.model.train()
        stream = iter(self.batches)
        metrics: dict[str, Any] = {}
        started, samples = time.perf_counter(), 0
        try:
            while self.step < self.total:
                metrics, data_state = self.train_step(stream)
                samples += metrics["samples"]
                elapsed = time.perf_counter() - started
                metrics["samples_per_s"] = samples / elapsed
                progress.log(metrics)
                last = self.step == self.total
                checkpoint = None
                if self._due(cfg.checkpoint.every) or last:
                    checkpoint = self._checkpoint(data_state, metrics)
                if self._due(cfg.validation.every) or (last and (cfg.validation.data is not None or self.evaluators)):
                    results = self.validate()
                    progress.log({"step": self.step, **results})
                    if self._improves(results.get(cfg.validation.metric)) and cfg.validation.keep_best:
                        best = checkpoint or self._checkpoint(data_state, metrics)  # every rank takes part
                        if self.ctx.is_main:
                            keep_best(self.run_dir, best)
                    metrics.update(results)
            self._report_skipped(progress)
        except torch.OutOfMemoryError as error:
            raise TrainingError(
                f"out of memory at step {self.step + 1}: {error}. Lower data.batch_size (raise "
                "gradient_accumulation to keep the effective batch), set gradient_checkpointing: true, "
                "or use precision: bf16"
            ) from None
        finally:
            progress.close()
        output = self._final_output()
        return TrainResult(steps=self.step, output=output, metrics=metrics, trainable=self.trainable)

    def _report_skipped(self, progress: Progress) -> None:
        per_rank = gather_objects(self.batches.skipped(), self.ctx)  # every rank takes part
        progress.skipped(self.step, merge_skipped(self.read_stats, per_rank))

    def _final_output(self) -> Path:
        """The trained weights in their usable form: a peft adapter (lora; what ``train_groups`` trained besides goes
        beside the adapters, in the adapter's ``trained_parts.safetensors``) or a whole model directory."""
        lora = self.cfg.trainable == "lora"
        output = self.run_dir / ("adapter" if lora else "model")
        if self.ctx.is_main:
            if lora:
                write_weights(self.model, self.run_dir, lora=True)
            else:
                from mmgpt.model.checkpoints import save_pretrained

                self.model.requires_grad_(False)  # a finished model is frozen, like every loaded one
                self.model.eval()
                save_pretrained(self.model, self.tokenizer, output)
        barrier(self.ctx)
        return output
