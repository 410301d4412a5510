"""`mmgpt demo`: MultiModal-GPT's recipe end to end on the embedded default, in minutes on a CPU.

1. write a fresh generated world (tuning data in the published formats + held-out scenes);
2. load the tiny pretrained OpenFlamingo shipped with the package (frozen);
3. evaluate it on the held-out scenes, asked with the instruction template and, to show what it knows, in the
   plain "Question: ... Answer:" text of its pretraining corpus;
4. instruction-tune it the paper's way: LoRA on self-attention, cross-attention and the cross-attention
   feed-forward, one vision-language and one language-only batch per step, loss on responses only;
5. evaluate again and print all three beside the issue's targets;
6. chat with the tuned model about an image it has never seen, several turns, reusing its cache.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mmgpt.embedded import tiny_world_path

if TYPE_CHECKING:  # DemoConfig imports nothing heavy: the CLI reads its defaults for `mmgpt demo --help`
    from rich.console import Console

    from mmgpt.train.config import TrainConfig

# The first is one of the paper's caption instructions (Table 3): the tiny model knows the phrasings it was tuned on.
CHAT = ("What do you see in this image?", "What colour is the {shape}?", "How many shapes are there?")


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("build/demo")
    seed: int = 0
    steps: int = 600
    lr: float = 2e-3
    batch_size: int = 8
    eval_scenes: int = 40
    eval_language: int = 40
    threads: int | None = None
    base: Path | None = None  # a saved tiny base to tune instead of the shipped one (e.g. your own pretraining)

    @property
    def base_path(self) -> Path:
        return self.base if self.base is not None else tiny_world_path()


def tuning_config(
    cfg: DemoConfig,
    world: Path,
    base: Path,
    *,
    run_dir: Path | None = None,
    one_word: bool = False,
    language: bool = True,
) -> TrainConfig:
    """The paper's recipe (LoRA r=16, alpha=16 on its targets; AdamW, warmup + cosine, clip 1.0) with a learning
    rate and length for a 3M-parameter model on a CPU (the paper: lr 1e-5 for 9B parameters on 8 GPUs).
    ``one_word`` / ``language``: the data variants of ``world_data_config`` (the paper-findings experiment)."""
    from mmgpt.config import LoraConfig
    from mmgpt.train.config import CheckpointConfig, LoggingConfig, OptimizerConfig, TrainConfig
    from mmgpt.world.write import world_data_config

    data = world_data_config(world, one_word=one_word, language=language)
    data = replace(data, batch_size=cfg.batch_size, language_batch_size=cfg.batch_size)
    return TrainConfig(
        model=str(base),
        data=data,
        run_dir=str(run_dir or cfg.out / "run"),
        trainable="lora",
        lora=LoraConfig(),
        optimizer=OptimizerConfig(lr=cfg.lr, warmup_steps=max(1, cfg.steps // 20)),
        max_steps=cfg.steps,
        seed=cfg.seed,
        checkpoint=CheckpointConfig(every=0, keep_last=1),
        logging=LoggingConfig(every=max(1, cfg.steps // 10)),
    )


def run_demo(cfg: DemoConfig = DemoConfig(), console: Console | None = None) -> int:
    import torch
    from rich.console import Console

    from mmgpt.chat import ChatModel, ChatSession
    from mmgpt.generate import GenerationConfig
    from mmgpt.load import load
    from mmgpt.model.lora import load_adapter
    from mmgpt.train.run import train
    from mmgpt.world.config import WorldConfig
    from mmgpt.world.describe import dense_caption
    from mmgpt.world.evaluate import evaluate_world
    from mmgpt.world.render import render_scene
    from mmgpt.world.report import print_results
    from mmgpt.world.scene import sample_scene
    from mmgpt.world.write import generate_world

    console = console or Console()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    base = cfg.base_path
    world = cfg.out / "world"
    console.rule("1. a generated world")
    model, tokenizer = load(base)
    manifest = generate_world(
        world, WorldConfig(seed=1000 + cfg.seed, scenes=600, heldout=cfg.eval_scenes), tokenizer=tokenizer
    )
    console.print(f"wrote {world}: {manifest['counts']}")
    n_params = sum(p.numel() for p in model.parameters())
    console.rule("2. the tiny pretrained OpenFlamingo, before tuning")
    console.print(f"{base}: {n_params / 1e6:.2f}M parameters, {model.summary()}")
    limits = dict(limit=cfg.eval_scenes)
    known = evaluate_world(model, tokenizer, world, prompt_format="qa", **limits)
    before = evaluate_world(model, tokenizer, world, **limits)
    console.rule("3. MultiModal-GPT's recipe: frozen base, LoRA, joint vision-language + language-only tuning")
    run_dir = cfg.out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = train(tuning_config(cfg, world, base), progress_stream=None)
    console.rule("4. after tuning (held-out scenes and language tasks)")
    tuned, tokenizer = load(base)
    load_adapter(tuned, result.output)
    after = evaluate_world(tuned, tokenizer, world, **limits)
    print_results({"base, Q/A text": known, "base": before, "tuned": after}, console)
    console.print(
        "[dim]base, Q/A text: the base asked in its pretraining corpus's plain 'Question: ... Answer:' text (what it "
        "knows); base and tuned: asked with the instruction template, as a chat user asks.[/dim]"
    )

    console.rule("5. a chat about a new image")
    scene = sample_scene(f"demo:{cfg.seed}", id="demo")
    image_path = cfg.out / "new-image.png"
    render_scene(scene).save(image_path)
    session = ChatSession(ChatModel.wrap(tuned, tokenizer))
    generation = GenerationConfig(max_new_tokens=96, stop_strings=("\n###",))
    shape = scene.shapes[0].kind
    for i, question in enumerate(CHAT):
        text = question.format(shape=shape)
        console.print(f"[bold]User:[/bold] {text}" + (f"  [dim][image {image_path}][/dim]" if i == 0 else ""))
        console.print("[bold]Assistant:[/bold] ", end="")
        for delta in session.send(text, images=[image_path] if i == 0 else [], config=generation):
            console.print(delta, end="", markup=False, highlight=False)
        console.print()
    console.print(f"[dim](the image really shows: {dense_caption(scene)})[/dim]", highlight=False)
    console.rule("next")
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s. Chat with the tuned model yourself:")
    print_next_commands(console, cfg, result.output, image_path, world)
    return 0


def print_next_commands(console: Console, cfg: DemoConfig, adapter: Path, image: Path, world: Path) -> None:
    """The commands to run next, each on one line however narrow the terminal (a command wrapped in two does not
    paste into a shell), with the shipped base by its name (``tiny-world``), not its install path."""
    from mmgpt.embedded import TINY_WORLD_NAME

    model = TINY_WORLD_NAME if cfg.base is None else str(cfg.base)
    for line in (
        f"  .venv/bin/mmgpt chat --model {model} --adapter {adapter} --image {image}",
        f"  .venv/bin/mmgpt serve --model {model} --adapter tuned={adapter}   # web demo on http://127.0.0.1:8000/",
        f"evaluate again: .venv/bin/mmgpt eval --model {model} --adapter {adapter} --world {world}",
    ):
        console.print(line, soft_wrap=True, markup=False, highlight=False)
