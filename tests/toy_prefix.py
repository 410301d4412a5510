"""A toy prefix model: the smallest second model kind of the contract (tests/test_contract.py drives it).

A tiny random CLIP ViT, its patches mean-pooled and mapped by one ``nn.Linear`` to ``PER_IMAGE`` input embeddings
of a tiny LLaMA. Images are runs of ``IMAGE_POSITION`` ids (``prefix_special_ids``: no vocabulary row is added); the
cache rule is the contract's default ``reusable_prefix`` and the forward the contract's: the toy supplies only how
its embeddings reach the LM (``run_language_model``, with a splice of its own). Nothing here imports a concrete
architecture of ``mmgpt.model``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from mmgpt.config import LanguageModelConfig, ModelConfig, VisionConfig
from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.model.contract import (
    CONNECTOR,
    VISION,
    Media,
    VisionLanguageModel,
)
from mmgpt.model.encoders.clip import VisionEncoder
from mmgpt.tokens import SpecialTokenIds, prefix_special_ids, train_tokenizer

CORPUS = [
    "a red circle above a blue square",
    "what color is the circle? the circle is red.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Image:\n### Instruction:\nDescribe the image.\n### Response:\nThere are two shapes.",
] * 4
IMAGE_SIZE = 32
PER_IMAGE = 3  # LM input positions per image
# initializer_range: wider than LLaMA's 0.02, so the random LM's greedy answers vary (at 0.02 it repeats one token).
LM_NUMBERS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.3,
)


class ToyPrefixModel(VisionLanguageModel):
    """pixels -> ViT patches [N, p, d_v] -> mean [N, d_v] -> Linear -> PER_IMAGE LM input embeddings [N, n, D],
    spliced where input_ids hold IMAGE_POSITION (image k's j-th position takes row k*n + j of its embeddings)."""

    kind = "toy-prefix"

    def __init__(self, vocab_size: int, special: SpecialTokenIds, *, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        # The tiny ViT of tests/model/conftest.py (not imported: it imports the builders of every model kind).
        vision = VisionConfig(
            image_size=IMAGE_SIZE, patch_size=8, width=32, layers=2, heads=2, mlp_dim=64, keep_cls=False
        )
        numbers = {**LM_NUMBERS, "vocab_size": vocab_size}
        self.vision_encoder = VisionEncoder.from_numbers(vision)
        self.projection = nn.Linear(vision.width, PER_IMAGE * numbers["hidden_size"])
        self.language_model = LlamaForCausalLM(LlamaConfig(**numbers))
        self.special = special
        self.config = ModelConfig(
            vision=vision, lm=LanguageModelConfig(hf_config={"model_type": "llama", **numbers}), fusion="prefix"
        )
        self.decoder_layers_path = "model.layers"

    @property
    def tokens_per_image(self) -> int:
        return PER_IMAGE

    @property
    def feature_shape(self) -> tuple[int, int]:
        return PER_IMAGE, self.language_model.config.hidden_size

    def part_groups(self) -> dict[str, str]:
        return {"vision_encoder": VISION, "projection": CONNECTOR}

    def describe(self) -> ModelConfig:
        raise NotImplementedError("the toy is rebuilt from its seed, never saved whole")

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.vision_encoder(pixels.to(self.device))  # [N, p, d_v]
        return self.projection(patches.mean(dim=1)).unflatten(1, self.feature_shape)  # [N, n, D]

    def run_language_model(
        self, input_ids: torch.Tensor, *, media: Media | None, before: torch.Tensor, lm_kwargs: dict
    ):
        is_image = input_ids == self.special.image  # [b, T]
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(is_image, 0))  # [b, T, D]
        if bool(is_image.any()):
            # The k-th image position of a row (counting those of earlier chunks) is image k // n, embedding k % n.
            order = before[:, None] + is_image.cumsum(dim=1) - 1
            rows, cols = is_image.nonzero(as_tuple=True)
            k = order[rows, cols]
            spliced = media.features[rows, k // PER_IMAGE, k % PER_IMAGE].to(embeds.dtype)
            embeds = embeds.index_put((rows, cols), spliced)
        return self.language_model(inputs_embeds=embeds, **lm_kwargs)


# ---------------------------------------------------------------------------------------------- helpers
def make_tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


def make_toy(tokenizer, *, seed: int = 0) -> ToyPrefixModel:
    return ToyPrefixModel(len(tokenizer), prefix_special_ids(tokenizer), seed=seed).eval()


def picture(seed: int, size: int = IMAGE_SIZE + 8) -> Image.Image:
    pixels = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return Image.frombytes("RGB", (size, size), pixels.numpy().tobytes())


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def prompt_of(model: VisionLanguageModel, tokenizer, text: str, images=()) -> tuple[list[int], torch.Tensor | None]:
    """One user turn -> (prompt ids in the model's prompt format, pixels [m, 3, H, W] or None)."""
    conversation = Conversation([Message("user", text, tuple(images))])
    ids = tokenize_prompt(conversation, tokenizer, fmt=model.prompt_format).input_ids
    transform = model.image_transform()
    return ids, torch.stack([transform(image) for image in images]) if images else None


def greedy_by_recomputation(model, prompt, pixels, n) -> list[int]:
    """Reference: the whole sequence again at every step, no cache; the placeholder and padding never chosen."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            kwargs = {} if pixels is None else {"images": pixels[None]}
            logits = model(torch.tensor([ids]), **kwargs).logits[0, -1].clone()
            logits[model.special.pad] = float("-inf")  # the image placeholder is no vocabulary id at all
            token = int(logits.argmax())
            out.append(token)
            ids.append(token)
    return out


def write_data(root: Path) -> Path:
    """LLaVA conversations over small PNGs and Dolly lines in their released formats; returns the data config."""
    (root / "images").mkdir(parents=True)
    llava = []
    for i, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour).save(root / "images" / f"{i}.png")
        turns = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": f"{colour}."}]
        llava.append({"id": str(i), "image": f"{i}.png", "conversations": turns})
    (root / "llava.json").write_text(json.dumps(llava))
    dolly = [{"instruction": f"{a} plus {b}?", "context": "", "response": str(a + b)} for a, b in [(1, 2), (3, 4)]]
    (root / "dolly.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dolly))
    config = {
        "vision_language": [{"name": "llava", "format": "llava", "path": "llava.json", "images": "images"}],
        "language": [{"name": "dolly", "format": "dolly", "path": "dolly.jsonl"}],
        "max_length": 128,
        "image_size": IMAGE_SIZE,
        "batch_size": 2,
        "language_batch_size": 2,
    }
    (root / "data.yaml").write_text(json.dumps(config))
    return root / "data.yaml"
