"""A tiny mPLUG-Owl release directory, complete: what ``MAGAer13/mplug-owl-llama-7b`` holds, at tiny sizes.

``mplug_owl_files`` writes the config and the weights (two fp16 shards + index, inv_freq buffers, interleaved qkv);
this adds what the rest of the download holds: a SentencePiece ``tokenizer.model`` trained here with LLaMA's
settings (tests/test_llama_tokenizer.py), ``tokenizer_config.json`` naming ``MplugOwlTokenizer`` (no BOS/EOS added,
pad ``<unk>``), ``special_tokens_map.json`` and the sampling ``generation_config.json`` the original never used.
The LM's vocabulary is the tokenizer's size; its initializer range is wide, so greedy answers vary. Its output
rows of the 256 byte-fallback pieces (ids 3-258) are zero, so a random answer is made of real pieces: transformers'
ByteFallback decoder turns a whole run of byte pieces into U+FFFD when the run is not valid UTF-8 (SentencePiece
itself keeps the valid bytes), so a streamed text and the whole decoded text could differ on random bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece
import torch
from transformers import AutoConfig, LlamaForCausalLM

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.styles.mplug_owl import SYSTEM
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.tokens import IMAGE_POSITION
from tests.model.mplug_owl_files import (
    ABSTRACTOR,
    TEXT,
    reference_abstractor,
    reference_vit,
    release_config,
    release_state,
    write_release,
)
from tests.model.mplug_owl_files import VISION as VIT
from tests.test_llama_tokenizer import LLAMA_TRAINER
from tests.toy_prefix import picture

VOCAB = 400
BYTES = slice(3, 3 + 256)  # <0x00> ... <0xFF> after <unk>, <s>, </s>
CORPUS = [
    SYSTEM,
    "\nHuman: <image>\nHuman: What is in the image?\nAI: A red circle above a blue square.",
    "\nHuman: Where is the man located in the image?\nAI: The man is in a small restaurant, eating.",
    "\nHuman: Construct a sentence using the given verb in the past tense\nshudder\nAI: She shuddered.",
    "What colour is the circle? The circle is red. Describe it panel by panel. Why is this funny?",
    "numbers 12345 and 2023, café, über, then a tab\tand a newline\n",
]
TEXT_CONFIG = dict(TEXT, vocab_size=VOCAB, initializer_range=0.5)
CONFIG = release_config(text=TEXT_CONFIG)
PER_IMAGE = CONFIG["num_query_tokens"] + 1  # the queries and vit_eos
TOKENIZER_CONFIG = {"tokenizer_class": "MplugOwlTokenizer", "model_max_length": 2048, "padding_side": "left"}
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
GENERATION_CONFIG = {"do_sample": True, "top_k": 3, "max_length": 512, "bos_token_id": 1, "eos_token_id": 2}
GENERATION_CONFIG |= {"pad_token_id": 0, "transformers_version": "4.28.1"}


def tokenizer_model(vocab_size: int = VOCAB) -> bytes:
    """A SentencePiece BPE model in LLaMA's settings (byte fallback, dummy prefix, <unk>/<s>/</s> = 0/1/2)."""
    lines = [" ".join(CORPUS[(i + j) % len(CORPUS)] for j in range(3)) + f" {i}" for i in range(60)]
    out = io.BytesIO()
    settings = dict(LLAMA_TRAINER, vocab_size=vocab_size)
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, **settings)
    return out.getvalue()


def write_tiny_release(root: Path, *, seed: int = 0, model: bytes | None = None, layout: str = "shards") -> Path:
    """The whole directory (module docstring); ``model``: the tokenizer.model bytes (trained once per session)."""
    state = release_state(seed=seed, config=CONFIG)
    state["language_model.lm_head.weight"][BYTES] = 0  # never the greedy choice (module docstring)
    write_release(root, state, config=CONFIG, layout=layout)
    (root / "tokenizer.model").write_bytes(model if model is not None else tokenizer_model())
    for name, content in [
        ("tokenizer_config.json", TOKENIZER_CONFIG),
        ("special_tokens_map.json", SPECIAL_TOKENS),
        ("generation_config.json", GENERATION_CONFIG),
    ]:
        (root / name).write_text(json.dumps(content, indent=2))
    return root


def pixels_of(model, *seeds: int) -> torch.Tensor:
    transform = model.image_transform()
    return torch.stack([transform(picture(seed)) for seed in seeds])


def prompt_ids(model, tokenizer, text: str, n_images: int) -> list[int]:
    conversation = Conversation([Message("user", text, tuple(f"{i}.png" for i in range(n_images)))])
    return tokenize_prompt(conversation, tokenizer, fmt=model.prompt_format).input_ids


class Reference:
    """The original's forward from the release's own tensors: ViT -> abstractor -> visual_fc, + vit_eos; the
    text embeddings and each run of image positions concatenated in order (a run of k * 7 positions: k images)."""

    def __init__(self, release: Path):
        from mmgpt.model.checkpoints.keys import read_state_dict

        state = {}
        for shard in sorted(release.glob("pytorch_model-*.bin")):
            state |= {k: v.float() for k, v in read_state_dict(shard).items()}
        self.state = state
        self.vit = reference_vit(VIT).eval()
        self.vit.load_state_dict({k[len("vision_model.") :]: v for k, v in state.items() if k[:13] == "vision_model."})
        text = dict(TEXT_CONFIG)
        self.lm = LlamaForCausalLM(AutoConfig.for_model(text.pop("model_type"), **text)).eval()
        lm = {k[len("language_model.") :]: v for k, v in state.items() if k.startswith("language_model.")}
        self.lm.load_state_dict({k: v for k, v in lm.items() if not k.endswith("inv_freq")})

    @torch.no_grad()
    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        queries = reference_abstractor(self.state, self.vit(pixels), heads=ABSTRACTOR["num_attention_heads"])
        projected = queries @ self.state["abstractor.visual_fc.weight"].T + self.state["abstractor.visual_fc.bias"]
        return torch.cat([projected, self.state["abstractor.vit_eos"].expand(len(pixels), -1, -1)], dim=1)

    @torch.no_grad()
    def logits(self, ids: list[int], pixels: torch.Tensor | None) -> torch.Tensor:
        images = iter(self.images(pixels) if pixels is not None else [])
        pieces, start = [], 0
        while start < len(ids):
            end = start
            image = ids[start] == IMAGE_POSITION
            while end < len(ids) and (ids[end] == IMAGE_POSITION) == image:
                end += 1
            if image:
                pieces += [next(images) for _ in range((end - start) // PER_IMAGE)]
            else:
                pieces.append(self.lm.get_input_embeddings()(torch.tensor(ids[start:end])))
            start = end
        return self.lm(inputs_embeds=torch.cat(pieces)[None]).logits[0]
