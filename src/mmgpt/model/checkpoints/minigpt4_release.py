"""The MiniGPT-4 release assembled from its downloads (``mmgpt.load("minigpt4-vicuna-7b", lm=..., eva=..., ...)``).

Four downloads (docs/minigpt4.md): ``lm`` (Vicuna v0 7B/13B, or LLaMA-2-7B-chat, as a HF directory with its
SentencePiece ``tokenizer.model``), ``eva`` (``eva_vit_g.pth``), ``qformer`` (``blip2_pretrained_flant5xxl.pth``;
the LLaMA-2 release has no Q-Former and takes none) and ``checkpoint`` (``prerained_minigpt4_7b.pth``,
``pretrained_minigpt4.pth``, ``pretrained_minigpt4_llama2_7b.pth``: ``llama_proj`` only).

Every input is checked before anything large is read: the paths, the LM's depth, width and vocabulary (its
``config.json``) against the preset, and the projection's shape against the LM's width and the resampler's. The
three ``.pth`` files are then read (memory-mapped) through the strict key maps of ``checkpoints/minigpt4.py``, so a
wrong file fails before the LM loads. The model is built without initialising anything outside the pretrained LM
(``init_weights=False``) and every weight outside the LM is then filled from the files: the ViT from ``eva``,
``ln_vision`` and the Q-Former from ``qformer``, ``llama_proj`` from ``checkpoint``. Keys not used are named in the
reports (the 40th EVA block, ``t5_proj``, the optimiser state beside the weights) and logged.

Without ``checkpoint`` the projection is freshly initialised (``nn.Linear``'s own rule, seeded): that is where
stage-1 training starts; a warning says so, since such a model cannot chat yet. The LLaMA-2 release never loads
``ln_vision`` (weight 1, bias 0).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedTokenizerBase

from mmgpt.config import ModelConfig
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints.keys import LoadReport, check_lm_matches, local_file
from mmgpt.model.checkpoints.minigpt4 import (
    check_projection,
    load_into,
    read_blip2_qformer,
    read_eva_vit_g,
    read_minigpt4_projection,
)
from mmgpt.model.language import hf_source
from mmgpt.model.prefix_lm import PrefixLM

if TYPE_CHECKING:
    from mmgpt.load import ModelPreset

log = logging.getLogger(__name__)
FRESH_PROJECTION_SEED = 0  # a run without checkpoint= starts from the same projection every time


@dataclass
class ReleaseWeights:
    """What the three files hold, keyed for our modules (``qformer``/``ln_vision`` None for the LLaMA-2 release,
    ``projection`` None for a fresh one)."""

    eva: dict[str, torch.Tensor]
    ln_vision: dict[str, torch.Tensor] | None
    qformer: dict[str, torch.Tensor] | None
    projection: dict[str, torch.Tensor] | None
    reports: dict[str, LoadReport]  # "checkpoint", "eva", "qformer" -> what was read from that file


def load_minigpt4_release(
    preset: ModelPreset,
    files: dict[str, str | Path | None],
    *,
    tokenizer: str | Path | None,
    dtype: str | None,
    device: str | torch.device,
    device_map: str | dict | None,
) -> tuple[PrefixLM, PreTrainedTokenizerBase]:
    """MiniGPT-4 from its downloads (module docstring); an adapter (``lora``, a peft directory) is loaded by the
    caller. ``dtype`` (default the preset's), ``device`` and ``device_map`` as for every release: the files are
    fp16 or fp32 and load into any dtype."""
    cfg = preset.model
    lm = check_inputs(preset, files)
    weights = read_release(cfg, files, lm_width=lm_width(cfg, lm), source=preset.name)
    cfg = dataclasses.replace(
        cfg,
        lm=dataclasses.replace(cfg.lm, path=str(lm), tokenizer=str(tokenizer) if tokenizer else None),
        dtype=dtype or cfg.dtype,
    )
    model, tok = build_model(cfg, device=device, device_map=device_map, init_weights=False)  # a PrefixLM
    for report in fill_weights(model, weights).values():
        if report.ignored:
            log.info("%s: loaded %d tensors; not used: %s", report.source, len(report.loaded), report.ignored)
    return model, tok


def check_inputs(preset: ModelPreset, files: dict[str, str | Path | None]) -> str:
    """Every path and the LM's numbers, before anything large is read; returns the LM source."""
    cfg, name = preset.model, preset.name
    has_qformer = cfg.prefix.resampler == "qformer"
    if cfg.fusion != "prefix" or cfg.prefix.resampler not in ("qformer", "patch_concat") or cfg.prefix.end_tokens:
        raise ValueError(
            f"preset {name!r} is not a MiniGPT-4 architecture (fusion: prefix, resampler: qformer or patch_concat, "
            f"end_tokens: 0); got fusion={cfg.fusion!r}, resampler={cfg.prefix.resampler!r}, "
            f"end_tokens={cfg.prefix.end_tokens}"
        )
    if files.get("clip") is not None:
        raise ValueError(
            f"clip={files['clip']}: MiniGPT-4's vision encoder is EVA ViT-g, read from eva= (eva_vit_g.pth); drop clip="
        )
    if files.get("qformer") is not None and not has_qformer:
        raise ValueError(
            f"qformer={files['qformer']}: preset {name!r} (the LLaMA-2 release) has no Q-Former - its image tokens "
            "go straight to llama_proj; drop qformer="
        )
    needed = {
        "lm": "the LM's HF directory (Vicuna v0 for the v1 releases, LLaMA-2-7B-chat for the LLaMA-2 one)",
        "eva": "LAVIS' eva_vit_g.pth",
    }
    if has_qformer:
        needed["qformer"] = "BLIP-2's blip2_pretrained_flant5xxl.pth"
    missing = [f"{key}= ({what})" for key, what in needed.items() if files.get(key) is None]
    if missing:
        raise ValueError(f"preset {name!r} needs {'; '.join(missing)}. See docs/minigpt4.md for the downloads")
    lm = hf_source(files["lm"], what="language model", key="lm=")
    for key, what in (("eva", "EVA ViT-g file"), ("qformer", "BLIP-2 file"), ("checkpoint", "MiniGPT-4 checkpoint")):
        if files.get(key) is not None:
            _local(files[key], what=f"{what} ({key}=)")
    check_lm_matches(cfg, name, lm)
    _check_vocabulary(cfg, name, lm)
    return lm


def _local(path: str | Path, *, what: str) -> Path:
    """``keys.local_file``, with an absolute path that does not exist named as such (never taken for a hub id)."""
    if Path(path).is_absolute() and not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; pass the path of the downloaded file")
    return local_file(path, what=what)


def _lm_config(lm: str):
    return AutoConfig.from_pretrained(lm) if Path(lm).is_dir() else None


def _check_vocabulary(cfg: ModelConfig, name: str, lm: str) -> None:
    """The released projections were trained on one LM each; Vicuna v0 has 32,001 rows, v1.1 and LLaMA 32,000."""
    want = (cfg.lm.hf_config or {}).get("vocab_size")
    config = _lm_config(lm)
    got = getattr(config, "vocab_size", None) if config is not None else None
    if want is not None and got is not None and want != got:
        hint = (
            " MiniGPT-4 v1 was trained on Vicuna v0 (32,001 rows: LLaMA's 32,000 + [PAD]; FastChat <= 0.1.10's "
            "apply_delta over LLaMA), not on Vicuna v1.1 (32,000)."
            if want == 32_001
            else ""
        )
        raise ValueError(
            f"lm={lm} has a vocabulary of {got} but preset {name!r} is built on an LM with {want}.{hint} Pass the LM "
            "the preset names, or write a preset YAML with your LM's numbers (base: this preset)"
        )


def lm_width(cfg: ModelConfig, lm: str) -> int:
    """The LM's hidden size, from its config.json (a hub id: the preset's number)."""
    config = _lm_config(lm)
    width = getattr(config.get_text_config(), "hidden_size", None) if config is not None else None
    return int(width or (cfg.lm.hf_config or {})["hidden_size"])


def image_width(cfg: ModelConfig) -> int:
    """The width of what llama_proj reads: the Q-Former's (768) or ``patch_group`` EVA tokens side by side (5632)."""
    if cfg.prefix.resampler == "qformer":
        return cfg.prefix.qformer.hidden
    return cfg.prefix.patch_group * cfg.vision.width


def read_release(
    cfg: ModelConfig, files: dict[str, str | Path | None], *, lm_width: int, source: str
) -> ReleaseWeights:
    """Read and check the three files (projection first: it is the smallest and names the release)."""
    reports: dict[str, LoadReport] = {}
    projection = None
    if files.get("checkpoint") is not None:
        path = _local(files["checkpoint"], what="MiniGPT-4 checkpoint (checkpoint=)")
        projection, report = read_minigpt4_projection(path)
        check_projection(projection, lm_width=lm_width, image_width=image_width(cfg), source=str(path))
        reports["checkpoint"] = report
    eva_file = _local(files["eva"], what="EVA ViT-g file (eva=)")
    eva, reports["eva"] = read_eva_vit_g(eva_file, layers=cfg.vision.layers)
    ln_vision = qformer = None
    if files.get("qformer") is not None:
        ln_vision, qformer, report = read_blip2_qformer(_local(files["qformer"], what="BLIP-2 file (qformer=)"))
        queries = qformer["query_tokens"].shape[1]
        if queries != cfg.prefix.qformer.queries:
            raise ValueError(
                f"{files['qformer']}: {queries} query tokens, but preset {source!r} has prefix.qformer.queries="
                f"{cfg.prefix.qformer.queries}; MiniGPT-4 uses BLIP-2's 32"
            )
        reports["qformer"] = report
    return ReleaseWeights(eva, ln_vision, qformer, projection, reports)


@torch.no_grad()
def fill_weights(model: PrefixLM, weights: ReleaseWeights) -> dict[str, LoadReport]:
    """Write every weight outside the LM (all uninitialised before): strict, any dtype and device. Returns the
    reports of the files read, by input name."""
    vision, sources = model.vision_encoder, {k: r.source for k, r in weights.reports.items()}
    load_into(vision, weights.eva, source=sources["eva"], skip=["model.post_layernorm"])
    if weights.qformer is not None:
        load_into(vision.ln_vision, weights.ln_vision, source=sources["qformer"])
        load_into(model.resampler, weights.qformer, source=sources["qformer"])
    else:  # the LLaMA-2 release: ln_vision as constructed, never trained
        vision.ln_vision.weight.fill_(1.0)
        vision.ln_vision.bias.zero_()
    if weights.projection is not None:
        load_into(model.connector.proj, weights.projection, source=sources["checkpoint"])
    else:
        fresh_projection(model.connector.proj)
        warnings.warn(
            "no checkpoint= given: llama_proj is freshly initialised (where stage-1 training starts); to chat, pass "
            "the MiniGPT-4 .pth (docs/minigpt4.md)",
            stacklevel=3,
        )
    return weights.reports


def fresh_projection(proj: nn.Linear, *, seed: int = FRESH_PROJECTION_SEED) -> None:
    """``nn.Linear``'s own initialisation (what MiniGPT-4's stage 1 starts from), drawn from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(proj.weight.shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    proj.weight.copy_(weight)
    if proj.bias is not None:
        bound = 1 / math.sqrt(proj.in_features)
        proj.bias.copy_(torch.empty(proj.bias.shape).uniform_(-bound, bound, generator=generator))
