"""MultiModal-GPT's released LoRA file (``mmgpt_lora_v0_with_demo.pt``): peft-wrapped keys -> our adapter."""

from __future__ import annotations

import re
from pathlib import Path

from mmgpt.config import LoraConfig
from mmgpt.model.checkpoints.keys import STRAY_BUFFER, LoadReport, map_keys, read_state_dict
from mmgpt.model.checkpoints.openflamingo import lm_key
from mmgpt.model.flamingo import Flamingo
from mmgpt.model.lora import PEFT_PREFIX, apply_lora, has_lora, set_lora_state

_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])(\.[^.]+)?\.weight$")
PEFT_WRAPPER = "lang_encoder." + PEFT_PREFIX  # peft wrapped the LM of the reference's Flamingo


def load_multimodal_gpt_lora(model: Flamingo, path: str | Path, cfg: LoraConfig | None = None) -> LoadReport:
    """Load MultiModal-GPT's LoRA file (``mmgpt-lora-v0-release.pt``) into ``model``, injecting the adapters first.

    ``cfg`` (default: the paper's r=16, alpha=16 targets) must match the file: the rank is checked against the
    tensors, and a key the targets don't produce (or a target the file lacks) is an error listing the keys.
    """
    source = str(path)
    cfg = cfg or LoraConfig()
    layers_path = model.decoder_layers_path

    def mapper(key: str) -> str | None:
        if not key.startswith(PEFT_WRAPPER):
            return None
        match = _LORA_KEY.match(lm_key(key[len(PEFT_WRAPPER) :], layers_path=layers_path))
        return f"{match['module']}.{match['ab']}.weight" if match else None

    raw = read_state_dict(path)
    state, _, rejected, aliases = map_keys(raw, mapper, source)
    ignored = [k for k in rejected if STRAY_BUFFER.search(k)]
    unexpected = [k for k in rejected if k not in ignored]
    if unexpected:
        raise ValueError(
            f"{source}: {len(unexpected)} keys are not LoRA weights under {PEFT_WRAPPER!r}: {unexpected[:8]}; "
            "is this MultiModal-GPT's LoRA file? (an OpenFlamingo checkpoint loads with load_openflamingo_checkpoint)"
        )
    if not state:
        raise ValueError(f"{source} holds no LoRA weights")
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if ranks != {cfg.r}:
        raise ValueError(f"{source} holds LoRA adapters of rank {sorted(ranks)} but lora.r={cfg.r}; set lora.r")
    if not has_lora(model):
        apply_lora(model, cfg)
    set_lora_state(model, state, source=source)
    loaded = sorted(f"lang_encoder.{k}" for k in state)
    return LoadReport(source=source, loaded=loaded, ignored=sorted(ignored) + sorted(aliases))
