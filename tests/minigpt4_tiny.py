"""A tiny MiniGPT-4, written as its four downloads in exactly the released layouts (tests of the MiniGPT-4 release).

- ``vicuna/``: a tiny LLaMA saved in fp16 with ``save_pretrained`` and a Vicuna-v0 tokenizer folder: a SentencePiece
  ``tokenizer.model`` trained here with LLaMA's settings (tests/test_llama_tokenizer.py) on MiniGPT-4's strings,
  plus ``added_tokens.json`` = ``{"[PAD]": V}`` - so the vocabulary is V + 1, as Vicuna v0's 32,001;
- ``eva_vit_g.pth``: LAVIS' EVA ViT-g layout, one block more than built (the 40th of the release);
- ``blip2_pretrained_flant5xxl.pth``: the LAVIS runner layout with ``t5_proj`` and the optimiser entries;
- ``prerained_minigpt4_7b.pth``: ``{"model": {llama_proj.*}, "optimizer", "config", "scaler", "epoch"}``;
- ``tiny-minigpt4.yaml``: a preset on ``minigpt4-vicuna-7b`` with tiny numbers (``release``, style, EVA settings
  come from the shipped preset); and the LLaMA-2 release's twin (``llama2/``, ``tiny-minigpt4-llama2.yaml``: no
  Q-Former, 4 patches side by side, no ``[PAD]``).

The references of tests/model/minigpt4_files.py (LAVIS layout, independent of transformers) write the files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece
import torch
import yaml
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from mmgpt.data.styles.minigpt4 import SYSTEM
from tests.model.minigpt4_files import (
    RefBlip2,
    RefEvaViT,
    randomize,
    write_blip2_file,
    write_eva_vit_g,
    write_minigpt4_projection,
)
from tests.test_llama_tokenizer import LLAMA_TRAINER, VICUNA_FILES

IMAGE_SIZE = 28
EVA = dict(image_size=IMAGE_SIZE, patch_size=7, width=64, heads=4, mlp_dim=96)
EVA_LAYERS = 2  # built; the file holds one more
QFORMER = dict(hidden=32, layers=3, heads=4, intermediate=48, queries=5)
QUERIES = QFORMER["queries"]
PATCH_POSITIONS = (IMAGE_SIZE // EVA["patch_size"]) ** 2 // 4  # the LLaMA-2 twin: 16 patches, 4 side by side
SP_VOCAB = LLAMA_TRAINER["vocab_size"]  # 600; Vicuna v0 adds [PAD] = 600
LM = dict(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
    initializer_range=0.3,  # wider than LLaMA's 0.02: the random LM's greedy answers vary
)
PHRASES = [
    "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: ",
    "###Human: <Img><ImageHere></Img> Take a look at this image and describe what you notice. ###Assistant: ",
    SYSTEM + "###Human: <Img><ImageHere></Img> What is in the picture?###Assistant:",
    "The image shows a red circle above a blue square.###",
    "A dog runs on the grass.\n",
    "[INST] <Img><ImageHere></Img> What colour is the circle? [/INST] The circle is red.",
    "## a heading # and a hash ## two ### three",
]


def train_sentencepiece() -> bytes:
    lines = [" ".join(PHRASES[(i + j) % len(PHRASES)] for j in range(3)) + f" {i}" for i in range(120)]
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, **LLAMA_TRAINER)
    return out.getvalue()


def write_tokenizer(folder: Path, model_bytes: bytes, files: dict) -> Path:
    """A LLaMA-style tokenizer folder: ``tokenizer.model`` and the JSON files (Vicuna v0's: ``VICUNA_FILES``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model_bytes)
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content))
    return folder


def write_lm(folder: Path, model_bytes: bytes, *, vocab: int, seed: int, files: dict, numbers: dict) -> None:
    """A tiny LLaMA as a HF directory in fp16 (as Vicuna ships), with its SentencePiece tokenizer folder."""
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **numbers)).to(torch.float16)
    lm.save_pretrained(folder)
    write_tokenizer(folder, model_bytes, files)


def tiny_preset(base: str, lm_vocab: int, **extra) -> dict:
    hf = {"model_type": "llama", "vocab_size": lm_vocab, **LM}
    vision = {**EVA, "layers": EVA_LAYERS}
    return {"base": base, "dtype": "float32", "vision": vision, "lm": {"hf_config": hf}, **extra}


def write_tiny_minigpt4(root: Path) -> dict:
    """Every download of the tiny MiniGPT-4 (and of its LLaMA-2 twin) under ``root``; returns their paths and the
    reference modules the files were written from."""
    model_bytes = train_sentencepiece()
    write_lm(root / "vicuna", model_bytes, vocab=SP_VOCAB + 1, seed=0, files=VICUNA_FILES, numbers=LM)
    write_lm(root / "llama2", model_bytes, vocab=SP_VOCAB, seed=1, files={}, numbers=LM)
    vit = randomize(RefEvaViT(blocks=EVA_LAYERS + 1, **EVA), seed=0)
    q = QFORMER
    blip2 = RefBlip2(
        image_dim=EVA["width"],
        dim=q["hidden"],
        layers=q["layers"],
        heads=q["heads"],
        intermediate=q["intermediate"],
        queries=q["queries"],
    )
    randomize(blip2, seed=1, dtype=torch.float32)
    proj = randomize(nn.Linear(q["hidden"], LM["hidden_size"]), seed=2)
    proj_llama2 = randomize(nn.Linear(4 * EVA["width"], LM["hidden_size"]), seed=3)
    write_eva_vit_g(vit, root / "eva_vit_g.pth")
    write_blip2_file(blip2, root / "blip2_pretrained_flant5xxl.pth")
    write_minigpt4_projection(proj, root / "prerained_minigpt4_7b.pth", dtype=torch.float16)
    write_minigpt4_projection(proj_llama2, root / "pretrained_minigpt4_llama2_7b.pth", dtype=torch.float16)
    qformer = {"resampler": "qformer", "qformer": QFORMER}
    preset = tiny_preset("minigpt4-vicuna-7b", SP_VOCAB + 1, prefix=qformer)
    (root / "tiny-minigpt4.yaml").write_text(yaml.safe_dump(preset))
    (root / "tiny-minigpt4-llama2.yaml").write_text(yaml.safe_dump(tiny_preset("minigpt4-llama2-7b", SP_VOCAB)))
    return dict(root=root, vit=vit.eval(), blip2=blip2.eval(), proj=proj, proj_llama2=proj_llama2)


def release_files(downloads: dict, *, llama2: bool = False) -> dict:
    """The keyword arguments of ``mmgpt.load`` for the tiny release (or its LLaMA-2 twin)."""
    root = downloads["root"]
    if llama2:
        return dict(
            lm=root / "llama2", eva=root / "eva_vit_g.pth", checkpoint=root / "pretrained_minigpt4_llama2_7b.pth"
        )
    return dict(
        lm=root / "vicuna",
        eva=root / "eva_vit_g.pth",
        qformer=root / "blip2_pretrained_flant5xxl.pth",
        checkpoint=root / "prerained_minigpt4_7b.pth",
    )


def load_tiny(downloads: dict, *, llama2: bool = False, **kwargs):
    """``mmgpt.load`` of the tiny release from its downloads."""
    import mmgpt

    preset = downloads["root"] / ("tiny-minigpt4-llama2.yaml" if llama2 else "tiny-minigpt4.yaml")
    return mmgpt.load(preset, **(release_files(downloads, llama2=llama2) | kwargs))


def reference_embeddings(downloads: dict, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [N, 3, H, W] -> [N, q, D] through the LAVIS-layout references: EVA -> ln_vision -> Q-Former -> proj."""
    vit, blip2, proj = downloads["vit"], downloads["blip2"], downloads["proj"]
    with torch.no_grad():
        return proj(blip2(blip2.ln_vision(vit(pixels, layers=EVA_LAYERS))))
