"""A randomly initialised tiny Flamingo and a two-shape image: the stand-in `mmgpt chat/serve --model tiny-random`
use to exercise the whole path without any weights (answers are gibberish; the embedded default,
``mmgpt.embedded``, is the model that knows something)."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from mmgpt.config import CrossAttentionConfig, LanguageModelConfig, ModelConfig, PerceiverConfig, VisionConfig
from mmgpt.data.templates import template_texts
from mmgpt.model.build import apply_architecture_options, build_model
from mmgpt.tokens import train_tokenizer

WORDS = (
    "a the red green blue yellow circle square triangle above below left right of is are there two three "
    "shapes image picture color what where how many describe"
)


def demo_image(size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 40, 40), fill="red")
    draw.rectangle((50, 55, 85, 90), fill="blue")
    return image


def tiny_random_model(seed: int):
    torch.manual_seed(seed)
    corpus = [*template_texts(), WORDS] * 4
    tokenizer = train_tokenizer(corpus, vocab_size=400)
    cfg = ModelConfig(
        vision=VisionConfig(image_size=64, patch_size=8, width=64, layers=2, heads=4, mlp_dim=128),
        perceiver=PerceiverConfig(depth=2, heads=4, dim_head=16, num_latents=16),
        cross_attention=CrossAttentionConfig(every_n_layers=2, heads=4, dim_head=16, media_mask="following"),
        lm=LanguageModelConfig(
            hf_config=dict(
                model_type="llama",
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=4,
                num_attention_heads=4,
                vocab_size=len(tokenizer),
            )
        ),
    )
    model, tokenizer = build_model(cfg, tokenizer=tokenizer)
    apply_architecture_options(model, gate_init=0.5)  # open gates, so the image really changes the output
    return model, tokenizer
