"""The three systems' recipes in miniature (``mmgpt experiment systems``): the run's settings, each system's
stages (what trains, on which data, at which rate, in which template) and the names of the findings' variants.
What runs them: ``systems.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SystemsConfig:
    out: Path = Path("build/systems")
    seed: int = 0
    steps: int = 1500  # optimiser steps per system, its stages together
    batch_size: int = 8
    scenes: int = 600  # training scenes of the world
    language: int = 2000  # language-only training tasks of the world
    eval_scenes: int = 40  # held-out scenes, and as many held-out language tasks
    eval_max_new_tokens: int | None = None  # cap on the evaluation's token budgets (tests)
    findings: bool = True
    base: Path | None = None  # the Flamingo every system starts from (default: the shipped tiny-world)
    threads: int | None = None
    decode_tokens: int = 64
    chat_new_tokens: int = 24


@dataclass(frozen=True)
class Stage:
    name: str
    trainable: str  # "lora" or a trainable preset of the model ("projection", "visual")
    data: str  # "mix" (+ language-only), "mix-vl" (without), "captions", "caption-documents", "descriptions"
    lr: float
    share: float  # of the system's step budget
    prompt_style: str | None = None  # None: the model's own
    lora: dict[str, Any] | None = None  # LoraConfig's fields (None: its defaults, MultiModal-GPT's)
    schedule: str = "cosine"
    weight_decay: float = 0.1
    decay_all: bool = True  # weight decay on every trained group's matrices (False: MultiModal-GPT's gated blocks)


@dataclass(frozen=True)
class System:
    key: str
    name: str
    base: str  # "flamingo", or a prefix base of prefix_bases.SYSTEMS
    stages: tuple[Stage, ...]


MPLUG_LORA = dict(
    r=8,
    alpha=32,
    dropout=0.05,
    self_attention_modules=["self_attn.q_proj", "self_attn.v_proj"],
    cross_attention=False,
    cross_attention_ff=False,
)
SYSTEMS = (
    System(
        "multimodal-gpt",
        "MultiModal-GPT",
        "flamingo",
        (Stage("LoRA", "lora", "mix", 2e-3, 1.0, decay_all=False),),
    ),
    System(
        "minigpt4",
        "MiniGPT-4",
        "minigpt4",
        (
            Stage("stage 1", "projection", "captions", 1e-2, 0.5, prompt_style="minigpt4-stage1", weight_decay=0.05),
            Stage("stage 2", "projection", "descriptions", 5e-3, 0.5, prompt_style="minigpt4", weight_decay=0.05),
        ),
    ),
    System(
        "mplug-owl",
        "mPLUG-Owl",
        "mplug-owl",
        (
            Stage("stage 1", "visual", "caption-documents", 1e-3, 0.5),
            Stage("stage 2", "lora", "mix", 2e-3, 0.5, lora=MPLUG_LORA, schedule="linear", weight_decay=1e-4),
        ),
    ),
)
# The findings' variants: (key, name, system, what changes).
STAGE1_ONLY = "minigpt4-stage1-only"
NO_LANGUAGE = "mplug-owl-no-language"
MODELS = "models"  # OUT/models/<key>: each tuned system (and the findings' mPLUG-Owl variant), one directory
