"""The three systems side by side on one fresh world: MultiModal-GPT, MiniGPT-4 and mPLUG-Owl, each its paper's
recipe in miniature, from the same tiny pretrained parts, with equal data and an equal step budget.

- **MultiModal-GPT** (the demo's recipe): the tiny OpenFlamingo, LoRA on self-attention, cross-attention and the
  cross-attention feed-forward; every step one vision-language batch of the paper's mix and one language-only batch.
- **MiniGPT-4**: the tiny ViT and pretrained perceiver (standing in for EVA + BLIP-2's Q-Former) and the tiny LM,
  all frozen; only the projection trains - stage 1 on the world's captions with no prompt (``minigpt4-stage1``),
  stage 2 on its detailed descriptions in MiniGPT-4's template.
- **mPLUG-Owl**: stage 1 trains the visual side (ViT, a fresh abstractor, the projection and its end token) on the
  same captions, the LM frozen, no template; stage 2 LoRA r 8 on the LM's q/v projections (the released script;
  the abstractor stays frozen) on the paper's mix plus the language-only batch, in mPLUG-Owl's one template.

``steps`` is each system's budget of optimiser steps, split evenly between the two stages of the prefix systems;
every step takes ``batch_size`` vision-language samples (and, where the recipe joins them, as many language-only
ones). The findings (``findings``): MiniGPT-4 after stage 1 only, and mPLUG-Owl's stage 2 without the language-only
data. The bases: ``prefix_bases.py``; the measures beyond the world's: ``measures.py``; the table:
``systems_report.py``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.experiments.recipes import (
    MODELS,
    NO_LANGUAGE,
    STAGE1_ONLY,
    SYSTEMS,
    Stage,
    System,
    SystemsConfig,
)

if TYPE_CHECKING:  # the CLI reads SystemsConfig's defaults without importing anything heavy
    from rich.console import Console


# ---------------------------------------------------------------------------------------------- data
def caption_files(world: Path, out: Path) -> tuple[Path, Path]:
    """The world's alt-text (``pretrain/captions.jsonl``: a dense caption per training image, its stand-in for
    LAION) in each prefix system's stage-1 form: a Karpathy-layout caption list (MiniGPT-4: conversations the
    ``minigpt4-stage1`` style renders as ``[image] caption\\n``) and interleaved documents (mPLUG-Owl:
    ``<image>caption`` + EOS, every token trained). The same pairs for both."""
    from mmgpt.tokens import END_OF_CHUNK, IMAGE

    pairs = []
    for line in (world / "pretrain/captions.jsonl").read_text().splitlines():
        row = json.loads(line)
        caption = row["text"].replace(IMAGE, "").replace(END_OF_CHUNK, "").strip()
        pairs.append((row["images"][0], caption))
    out.mkdir(parents=True, exist_ok=True)
    listed, documents = out / "captions.json", out / "captions.jsonl"
    listed.write_text(json.dumps([{"image": i, "caption": c, "image_id": k} for k, (i, c) in enumerate(pairs)]))
    documents.write_text("".join(json.dumps({"images": [i], "text": f"{IMAGE}{c}"}) + "\n" for i, c in pairs))
    return listed.resolve(), documents.resolve()  # data configs resolve relative paths under the world


def stage_data(kind: str, world: Path, captions: tuple[Path, Path], batch_size: int):
    """The DataConfig of one stage, read from the world (every system's data comes from the same files)."""
    from mmgpt.data.config import SourceConfig
    from mmgpt.world.write import IMAGES, world_data_config

    data = world_data_config(world, language=kind == "mix")
    sources = {
        "captions": SourceConfig(name="world_alt_text", format="coco_captions", path=str(captions[0]), images="."),
        "caption-documents": SourceConfig(
            name="world_alt_text", format="interleaved", path=str(captions[1]), images="."
        ),
        "descriptions": SourceConfig(
            name="world_detail", format="llava", path="llava/detail_world.json", images=IMAGES
        ),
    }
    if kind in sources:
        data = replace(data, vision_language=[sources[kind]], language=[], language_ratio=0.0)
    elif kind not in ("mix", "mix-vl"):
        raise ValueError(f"unknown stage data {kind!r}")
    return replace(data, batch_size=batch_size, language_batch_size=batch_size)


def stage_config(stage: Stage, *, model: Path, run_dir: Path, steps: int, data, seed: int):
    from mmgpt.config import LoraConfig
    from mmgpt.train.config import CheckpointConfig, LoggingConfig, OptimizerConfig, TrainConfig

    optimizer = OptimizerConfig(
        lr=stage.lr,
        weight_decay=stage.weight_decay,
        schedule=stage.schedule,
        warmup_steps=max(1, steps // 20),
        **({"weight_decay_groups": None} if stage.decay_all else {}),
    )
    return TrainConfig(
        model=str(model),
        data=data,
        run_dir=str(run_dir),
        trainable=stage.trainable,
        prompt_style=stage.prompt_style,
        lora=LoraConfig(**(stage.lora or {})),
        optimizer=optimizer,
        max_steps=steps,
        seed=seed,
        checkpoint=CheckpointConfig(every=0, keep_last=1),
        logging=LoggingConfig(every=max(1, steps // 5), progress=False),
    )


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Trained:
    """A system's (or variant's) training: its final model directory and what each stage did."""

    model: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    stage_models: list[Path] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(s["seconds"] for s in self.stages)


def stage_steps(system: System, steps: int) -> list[int]:
    """Each stage's share of the budget, at least one step each, summing to ``steps`` (the last takes the rest)."""
    counts = [max(1, round(stage.share * steps)) for stage in system.stages[:-1]]
    return [*counts, max(1, steps - sum(counts))]


def train_system(
    system: System,
    *,
    start: Path,
    cfg: SystemsConfig,
    world: Path,
    captions: tuple[Path, Path],
    out: Path,
    model_dir: Path,
    skip: int = 0,
    data_override: dict[int, str] | None = None,
) -> Trained:
    """Run the stages of ``system`` from the model directory ``start`` (``skip`` first stages already done:
    ``start`` is then their output), each in ``out/<stage>``; ends with one model directory, ``model_dir`` (LoRA
    merged), named for what it is (``OUT/models/minigpt4``: the name ``mmgpt serve`` gives it)."""
    from mmgpt.train.run import train

    trained = Trained(model=model_dir)
    model = start
    for index, (stage, steps) in enumerate(zip(system.stages, stage_steps(system, cfg.steps), strict=True)):
        if index < skip:
            continue
        run_dir = out / stage.name.replace(" ", "").lower()
        if run_dir.exists():
            shutil.rmtree(run_dir)
        data_kind = (data_override or {}).get(index, stage.data)
        data = stage_data(data_kind, world, captions, cfg.batch_size)
        config = stage_config(stage, model=model, run_dir=run_dir, steps=steps, data=data, seed=cfg.seed)
        started = time.perf_counter()
        result = train(config, progress_stream=None)
        seconds = time.perf_counter() - started
        trained.stages.append(
            {
                "stage": stage.name,
                "trainable": stage.trainable,
                "data": data_kind,
                "prompt_style": stage.prompt_style,
                "steps": steps,
                "lr": stage.lr,
                "seconds": seconds,
                "trained": {group: n for group, n in result.trainable.items() if n and group != "total"},
                "loss": result.metrics.get("loss"),
            }
        )
        lora = stage.trainable == "lora"
        model = merge_adapter(model, result.output, run_dir / "merged") if lora else result.output
        trained.stage_models.append(model)
    if trained.model.exists():
        shutil.rmtree(trained.model)
    shutil.copytree(model, trained.model)
    return trained


def merge_adapter(base: Path, adapter: Path, out: Path) -> Path:
    """``base`` + ``adapter`` folded into one model directory (what ``mmgpt export --lora`` writes)."""
    from mmgpt.load import load
    from mmgpt.model.checkpoints import save_pretrained

    model, tokenizer = load(base, lora=adapter, merge_lora=True)
    return save_pretrained(model, tokenizer, out)


def prepare(cfg: SystemsConfig) -> tuple[Path, tuple[Path, Path], dict[str, Path]]:
    """A fresh world, the stage-1 caption files and the bases: (world, captions, base directory by ``System.base``)."""
    from mmgpt.embedded import tiny_world_path
    from mmgpt.experiments.prefix_bases import SYSTEMS as PREFIX_SYSTEMS
    from mmgpt.experiments.prefix_bases import write_prefix_base
    from mmgpt.load import load
    from mmgpt.world.config import WorldConfig
    from mmgpt.world.write import generate_world

    flamingo = cfg.base if cfg.base is not None else tiny_world_path()
    world = cfg.out / "world"
    _, tokenizer = load(flamingo)
    world_cfg = WorldConfig(seed=3000 + cfg.seed, scenes=cfg.scenes, heldout=cfg.eval_scenes, language=cfg.language)
    generate_world(world, world_cfg, tokenizer=tokenizer)
    captions = caption_files(world, cfg.out / "data")
    bases = {"flamingo": flamingo}
    for key in PREFIX_SYSTEMS:
        bases[key] = write_prefix_base(key, cfg.out / "bases" / key, source=flamingo, seed=cfg.seed)
    return world, captions, bases


def run_findings(
    cfg: SystemsConfig, trained: dict[str, Trained], world: Path, captions: tuple[Path, Path]
) -> dict[str, dict[str, Any]]:
    """MiniGPT-4 after its stage 1 only (the same run's stage-1 model), and mPLUG-Owl's stage 2 again from the same
    stage-1 model without the language-only batches."""
    from mmgpt.experiments.measures import evaluate_run

    minigpt4, mplug = trained["minigpt4"], trained["mplug-owl"]
    stage1 = Trained(model=minigpt4.stage_models[0], stages=minigpt4.stages[:1])
    results = evaluate_run(
        stage1.model,
        cfg,
        world,
        speed=False,
        records=cfg.out / "minigpt4" / "stage1-evaluation.json",
        training_template=True,
    )
    runs = {STAGE1_ONLY: _entry("MiniGPT-4, stage 1 only", stage1, results)}
    out = cfg.out / NO_LANGUAGE
    owl_recipe = next(system for system in SYSTEMS if system.key == "mplug-owl")
    variant = train_system(
        owl_recipe, start=mplug.stage_models[0], cfg=cfg, world=world, captions=captions, out=out,
        model_dir=cfg.out / MODELS / NO_LANGUAGE, skip=1, data_override={1: "mix-vl"},
    )  # fmt: skip
    variant.stages = [*mplug.stages[:1], *variant.stages]
    results = evaluate_run(variant.model, cfg, world, speed=False, records=out / "evaluation.json")
    runs[NO_LANGUAGE] = _entry("mPLUG-Owl, no language-only data", variant, results)
    return runs


def run(cfg: SystemsConfig | None = None, console: Console | None = None) -> dict[str, Any]:
    """The whole experiment (module docstring): prints the tables and the commands that chat with each tuned
    system; returns every figure (what ``--json`` writes). Everything goes under ``cfg.out``."""
    import torch
    from rich.console import Console

    from mmgpt.experiments.measures import evaluate_run
    from mmgpt.experiments.systems_report import print_next_commands, print_tables
    from mmgpt.world.write import load_heldout

    cfg = cfg or SystemsConfig()
    console = console or Console()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    console.rule("a fresh world, and the tiny bases")
    world, captions, bases = prepare(cfg)
    console.print(f"world {world} ({cfg.scenes} scenes); bases: " + ", ".join(f"{k} {v}" for k, v in bases.items()))
    systems: dict[str, dict[str, Any]] = {}
    trained: dict[str, Trained] = {}
    for system in SYSTEMS:
        console.rule(system.name)
        out = cfg.out / system.key
        trained[system.key] = done = train_system(
            system, start=bases[system.base], cfg=cfg, world=world, captions=captions, out=out,
            model_dir=cfg.out / MODELS / system.key,
        )  # fmt: skip
        results = evaluate_run(
            done.model, cfg, world, speed=True, records=out / "evaluation.json",
            training_template=system.key == "minigpt4",
        )  # fmt: skip
        systems[system.key] = _entry(system.name, done, results)
        console.print(f"{system.name}: trained in {done.seconds:.0f} s, model {done.model}")
    if cfg.findings:
        console.rule("the papers' findings")
        systems.update(run_findings(cfg, trained, world, captions))
    seconds = time.perf_counter() - started
    (cfg.out / "table.md").write_text(print_tables(console, systems, [s.key for s in SYSTEMS]))
    console.print(f"{len(systems)} runs in {seconds:.0f} s ({cfg.steps} steps per system); {cfg.out}/table.md")
    print_next_commands(console, {s.key: systems[s.key]["model"] for s in SYSTEMS}, load_heldout(world).images[0])
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    return {"config": config, "systems": systems, "seconds": seconds}


def _entry(name: str, trained: Trained, results: dict[str, Any]) -> dict[str, Any]:
    """One run's figures for the table and the JSON: its evaluation (records left in the run's evaluation.json;
    evaluate_world's ``seconds`` as ``eval_seconds``), its stages and the parameters each trained."""
    figures = {k: v for k, v in results.items() if k not in ("records", "seconds")}
    return {
        "name": name,
        "model": str(trained.model),
        "stages": trained.stages,
        "trained_parameters": {stage["stage"]: sum(stage["trained"].values()) for stage in trained.stages},
        "train_seconds": trained.seconds,
        "eval_seconds": results["seconds"],
        **figures,
    }
