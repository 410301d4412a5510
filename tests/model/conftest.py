"""Tiny models of every supported LM family, built locally from numbers (no network, no weights)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from mmgpt.config import (
    CrossAttentionConfig,
    LanguageModelConfig,
    LoraConfig,
    ModelConfig,
    PerceiverConfig,
    VisionConfig,
    save_yaml,
)
from mmgpt.model.build import build_language_model, build_model, build_vision_encoder
from mmgpt.model.lora import apply_lora, lora_parameters
from mmgpt.tokens import train_tokenizer
from tests.model.reference_files import multimodal_gpt_lora_file, openflamingo_state

CORPUS = [
    "a red circle above a blue square",
    "what color is the circle? the circle is red.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Image:\n### Instruction:\nDescribe the image.\n### Response:\nThere are two shapes.",
] * 4

IMAGE_SIZE = 32
# The tiny ViT of every test model (the one home of its numbers).
TINY_VISION = VisionConfig(image_size=IMAGE_SIZE, patch_size=8, width=32, layers=2, heads=2, mlp_dim=64)


def lm_numbers(family: str, vocab_size: int) -> dict:
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
    return {
        "llama": dict(model_type="llama", num_key_value_heads=2, **small),
        "qwen2": dict(model_type="qwen2", num_key_value_heads=2, **small),
        "mistral": dict(model_type="mistral", num_key_value_heads=2, **small),
        "gpt_neox": dict(model_type="gpt_neox", **small),
        "mpt": dict(model_type="mpt", d_model=64, n_heads=4, n_layers=4, expansion_ratio=2, max_seq_len=256),
    }[family] | {"vocab_size": vocab_size}


def tiny_config(family: str = "llama", media_mask: str = "previous", vocab_size: int = 300, **xattn) -> ModelConfig:
    return ModelConfig(
        vision=TINY_VISION,
        perceiver=PerceiverConfig(depth=2, heads=2, dim_head=16, num_latents=8),
        cross_attention=CrossAttentionConfig(every_n_layers=2, heads=2, dim_head=16, media_mask=media_mask, **xattn),
        lm=LanguageModelConfig(hf_config=lm_numbers(family, vocab_size)),
    )


def make_tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def tiny_model(family: str = "llama", media_mask: str = "previous", *, open_gates: bool = True, seed: int = 0, **xattn):
    """A tiny Flamingo with random weights; ``open_gates`` sets the tanh gates non-zero so images matter."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    model, tokenizer = build_model(tiny_config(family, media_mask, len(tokenizer), **xattn), tokenizer=tokenizer)
    if open_gates:
        with torch.no_grad():
            for block in model.gated_blocks().values():
                block.attn_gate.fill_(1.0)
                block.ff_gate.fill_(0.5)
    return model, tokenizer


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3, H, W] normalised-looking pixels."""
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def openflamingo_9b_v1_on_meta():
    """The OpenFlamingo-9B v1 architecture (LLaMA-7B, CLIP ViT-L/14, a block every 4 layers), no memory."""
    from mmgpt.model.build import build_language_model, build_vision_encoder
    from mmgpt.model.flamingo import build_flamingo
    from mmgpt.tokens import SpecialTokenIds

    llama_7b = dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32000,
    )
    cfg = ModelConfig(lm=LanguageModelConfig(hf_config=llama_7b))
    cfg.cross_attention.every_n_layers = 4
    with torch.device("meta"):
        return build_flamingo(
            cfg=cfg,
            vision_encoder=build_vision_encoder(cfg.vision),
            lang_encoder=build_language_model(cfg.lm),
            special=SpecialTokenIds(image=32001, end_of_chunk=32000, pad=32002, eos=2, bos=1),
            vocab_size=32003,
        )


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def prompt(model) -> torch.Tensor:
    image = model.special.image
    return torch.tensor([[image, 5, 6, 7, image, 8, 9, 10], [image, 11, 12, image, 13, 14, 15, 16]])


def logits(model) -> torch.Tensor:
    """The float32 logits of two rows with two images each: what the loading tests compare."""
    with torch.no_grad():
        return model(prompt(model), images=random_images(4).unflatten(0, (2, 2))).logits.float()


@pytest.fixture(scope="session")
def downloads(tmp_path_factory):
    """What a user downloads, for a tiny model: LM dir (+ tokenizer), CLIP dir, checkpoint.pt, the LoRA file."""
    root = tmp_path_factory.mktemp("downloads")
    tokenizer = make_tokenizer()
    cfg = tiny_config("llama", "following", vocab_size=len(tokenizer))
    torch.manual_seed(0)
    build_language_model(cfg.lm).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    build_vision_encoder(cfg.vision).model.save_pretrained(root / "clip")
    save_yaml(cfg, root / "tiny.yaml")
    (root / "tiny-mmgpt.yaml").write_text(f"base: {root / 'tiny.yaml'}\nlora:\n  r: 16\n  alpha: 16\n")

    paths = dataclasses.replace(
        cfg,
        lm=dataclasses.replace(cfg.lm, path=str(root / "llama")),
        vision=dataclasses.replace(cfg.vision, path=str(root / "clip")),
    )
    base, _ = build_model(paths)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # a trained checkpoint: non-zero gates, so the images matter
        for name, p in base.named_parameters():
            if name.startswith("perceiver.") or "gated_cross_attn_layer" in name or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "gate" in name else 0.1))
    torch.save(openflamingo_state(base, alias=True), root / "checkpoint.pt")
    tuned = apply_lora(copy.deepcopy(base), LoraConfig())
    with torch.no_grad():
        for p in lora_parameters(tuned):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    multimodal_gpt_lora_file(tuned, root / "lora.pt", peft_naming="old", decoder_layer=True, alias=True)
    return {"root": root, "base": base, "tuned": tuned}
