"""`make demo` / `mmgpt demo`: the whole chat path end to end on the machine at hand.

Until the embedded default (a pretrained tiny OpenFlamingo and its instruction tuning) exists, this builds a
RANDOMLY INITIALISED tiny model and says so: it shows every stage working - tokenizer with the special tokens,
CLIP preprocessing, ViT -> perceiver -> gated cross-attention, the paper's prompt template, a two-turn chat with
cached streaming generation - not a model that knows anything.
"""

from __future__ import annotations

import time

import torch
from PIL import Image, ImageDraw

from mmgpt.config import CrossAttentionConfig, LanguageModelConfig, ModelConfig, PerceiverConfig, VisionConfig
from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.images import ImageTransform
from mmgpt.data.templates import HEADER
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.generate import GenerationConfig, stream
from mmgpt.model.build import build_model
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
    corpus = [HEADER, "### Image:\n### Instruction:\n### Response:\n", WORDS] * 4
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
    with torch.no_grad():  # random gates, so the image really changes the output
        for block in model.gated_blocks().values():
            block.attn_gate.fill_(0.5)
            block.ff_gate.fill_(0.5)
    return model, tokenizer


def run_demo(*, seed: int = 0) -> int:
    print("mmgpt demo: the embedded default (a pretrained tiny model) is not built yet, so this runs the whole")
    print("chat path on a RANDOMLY INITIALISED tiny model. Expect gibberish answers; the point is the pipeline.\n")
    start = time.perf_counter()
    model, tokenizer = tiny_random_model(seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"built a tiny Flamingo ({n_params / 1e6:.2f}M parameters, LLaMA decoder with gated cross-attention at "
        f"layers {model.block_layers}, media mask {model.config.cross_attention.media_mask!r}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    transform = ImageTransform(size=model.vision_encoder.image_size)
    config = GenerationConfig(max_new_tokens=24, temperature=0.7, top_p=0.9, seed=seed, stop_strings=("\n###",))
    conversation = Conversation([Message("user", "What do you see in this image?", images=[demo_image()])])
    for question in (None, "What color is the circle?"):
        if question is not None:
            conversation = conversation.with_user_turn(question)
        sample = tokenize_prompt(conversation, tokenizer)
        pixels = torch.stack([transform(image) for image in sample.images]) if sample.images else None
        attached = " [image attached]" if conversation.messages[-1].images else ""
        print(f"\nUser: {conversation.messages[-1].text}{attached}")
        print("Assistant: ", end="", flush=True)
        t0 = time.perf_counter()
        answer = ""
        for delta in stream(model, tokenizer, sample.input_ids, images=pixels, config=config):
            answer += delta
            print(delta, end="", flush=True)
        print(f"\n  ({len(sample.input_ids)} prompt tokens, {time.perf_counter() - t0:.2f} s)")
        conversation = conversation.with_answer(answer.strip())
    print("\nNext: `make test` runs the test suite; `python bench/generate.py` measures cached decoding.")
    return 0
