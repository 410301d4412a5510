"""Writers of the real released files, from tiny models: OpenFlamingo's checkpoint.pt and MultiModal-GPT's LoRA file
(reference.md section 3), byte-for-byte in their key layouts, for the loading tests."""

from __future__ import annotations

import torch
from peft import get_peft_model_state_dict


class TuningConfig:
    """Stands for MultiModal-GPT's pickled mmengine config: a class the loader cannot (and must not) import."""

    def __init__(self):
        self.lora = True
        self.lora_r = 16
        self.lora_target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "to_q", "to_kv", "to_out", "ff.1", "ff.3"]


def openflamingo_state(model, *, alias: bool) -> dict[str, torch.Tensor]:
    """The keys of an OpenFlamingo checkpoint.pt: perceiver, blocks (v1: twice), input embeddings."""
    state = {f"perceiver.{n}": p.detach() for n, p in model.perceiver.named_parameters()}
    layers = model.decoder_layers_path
    for i, block in model.gated_blocks().items():
        for n, p in block.named_parameters():
            state[f"lang_encoder.{layers}.{i}.gated_cross_attn_layer.{n}"] = p.detach()
            if alias:  # the same module registered a second time: the same storage, as torch.save keeps it
                state[f"lang_encoder.gated_cross_attn_layers.{i}.{n}"] = p.detach()
    emb = model.lang_encoder.get_input_embeddings().weight
    name = next(n for n, p in model.lang_encoder.named_parameters() if p is emb)
    state[f"lang_encoder.{name}"] = emb.detach()
    return state


def multimodal_gpt_lora_file(model, path, *, peft_naming: str, decoder_layer: bool, alias: bool) -> None:
    """Write the LoRA file as MultiModal-GPT's trainer did: DDP prefix, peft wrapper, pickled tuning_config.

    The reference wraps each LLaMA layer as FlamingoLayer(..., decoder_layer), so its self-attention keys read
    ``model.layers.{i}.decoder_layer.self_attn...``; reference.md writes them without it - both are accepted.
    """
    state = {}
    for key, value in get_peft_model_state_dict(
        model.lang_encoder
    ).items():  # model.layers.0.self_attn.q_proj.lora_A.weight
        if decoder_layer and "gated_cross_attn_layer" not in key:
            head, rest = key.split(".", 3)[:3], key.split(".", 3)[3]
            key = ".".join([*head, "decoder_layer", rest])
        if peft_naming == "new":
            key = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight"
            )
        state[f"module.lang_encoder.base_model.model.{key}"] = value
        if alias and ".gated_cross_attn_layer." in key:
            i = key.split(".")[2]
            tail = key.split(".gated_cross_attn_layer.", 1)[1]
            state[f"module.lang_encoder.base_model.model.gated_cross_attn_layers.{i}.{tail}"] = value
    state["module.lang_encoder.base_model.model.model.layers.0.decoder_layer.self_attn.rotary_emb.inv_freq"] = (
        torch.arange(8.0)
    )
    torch.save({"model_state_dict": state, "tuning_config": TuningConfig()}, path)
