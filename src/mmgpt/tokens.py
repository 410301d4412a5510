"""Special tokens, IGNORE_INDEX, and the tokenizers used by the project.

OpenFlamingo adds two tokens to the language model's tokenizer, in this order: ``<|endofchunk|>`` (closes an
image-text chunk) and ``<image>`` (one per image; the image's latents are cross-attention memory, so an image
costs exactly one token of context), then ``<PAD>`` when the tokenizer has no pad token. For LLaMA-7B (32000
base) that gives ids 32000, 32001, 32002 and a vocabulary of 32003 (reference.md section 2).

Prefix models (MiniGPT-4, mPLUG-Owl) add no vocabulary row: each image is a run of ``IMAGE_POSITION`` ids -
outside every vocabulary, so they can never be generated - that the model replaces by the image's embeddings.
LM directories, adapters and merged exports then stay byte-compatible with the originals.

This module is the one home of those strings, of IMAGE_POSITION and of IGNORE_INDEX.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
END_OF_CHUNK = "<|endofchunk|>"
IMAGE = "<image>"
PAD = "<PAD>"
IMAGE_POSITION = -200  # a prefix model's image position in input_ids: never a vocabulary id, never a label


@dataclass(frozen=True)
class PromptFormat:
    """How a model wants conversations tokenised: its prompt style (``data/styles.py``) and the ids one image
    becomes (Flamingo: its ``<image>`` id once; prefix models: ``IMAGE_POSITION`` once per image embedding).
    ``image_tokens=None``: the tokenizer's ``<image>`` id, once (data tools that run without a model)."""

    style: str = "multimodal-gpt"
    image_tokens: tuple[int, ...] | None = None


FLAMINGO_FORMAT = PromptFormat()  # MultiModal-GPT's template, the tokenizer's <image> once per image


@dataclass(frozen=True)
class SpecialTokenIds:
    """The ids the model and the data pipeline need, read once from a tokenizer."""

    image: int  # what an image position holds in input_ids: <image> (Flamingo) or IMAGE_POSITION (prefix models)
    end_of_chunk: int | None
    pad: int
    eos: int
    bos: int | None


_LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "MplugOwlTokenizer")


def read_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer from a local folder, never from the network: a LLaMA SentencePiece ``tokenizer.model`` (LLaMA,
    Vicuna, mPLUG-Owl; when the folder's config names a LLaMA tokenizer class or there is no ``tokenizer.json``) is
    read by :func:`mmgpt.llama_tokenizer.load_sentencepiece_tokenizer`, which encodes exactly as the slow tokenizer
    the originals used; anything else by ``AutoTokenizer``. A hub id (``org/name``) that is no local folder goes to
    ``AutoTokenizer``, which downloads it where a hub is reachable."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        if folder.exists() or str(path).count("/") != 1:
            raise ValueError(f"{path}: no such tokenizer folder; point at a folder with the tokenizer's files")
        return AutoTokenizer.from_pretrained(str(path))
    if (folder / "tokenizer.model").is_file():
        config = folder / "tokenizer_config.json"
        named = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
        if named in _LLAMA_CLASSES or not (folder / "tokenizer.json").is_file():
            from mmgpt.llama_tokenizer import load_sentencepiece_tokenizer

            return load_sentencepiece_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
    """Add ``<|endofchunk|>``, ``<image>`` (and ``<PAD>`` if there is no pad token) in OpenFlamingo's order.

    Idempotent: a tokenizer that already has them (e.g. one saved by this project) is left unchanged.
    """
    missing = [t for t in (END_OF_CHUNK, IMAGE) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return special_token_ids(tokenizer)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
    """Read the special ids of a tokenizer that already went through :func:`add_special_tokens`."""
    vocab = tokenizer.get_vocab()
    for token in (END_OF_CHUNK, IMAGE):
        if token not in vocab:
            raise ValueError(f"tokenizer has no {token!r} token; call mmgpt.tokens.add_special_tokens(tokenizer) first")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no EOS token; every response ends with EOS, so one is required")
    return SpecialTokenIds(
        image=vocab[IMAGE],
        end_of_chunk=vocab[END_OF_CHUNK],
        pad=tokenizer.pad_token_id,
        eos=tokenizer.eos_token_id,
        bos=tokenizer.bos_token_id,
    )


def prefix_special_ids(tokenizer: PreTrainedTokenizerBase) -> SpecialTokenIds:
    """The ids a prefix model needs, adding nothing to the tokenizer: images are IMAGE_POSITION runs; padding is
    the tokenizer's pad token, else its unknown token, else EOS (padding is masked everywhere, so any id works)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no EOS token; every response ends with EOS, so one is required")
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id) if t is not None)
    return SpecialTokenIds(
        image=IMAGE_POSITION, end_of_chunk=None, pad=pad, eos=tokenizer.eos_token_id, bos=tokenizer.bos_token_id
    )


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """Train a small tokenizer for tiny models (byte-level BPE, ``<s>`` prepended, ``</s>`` as EOS).

    Used for tiny models built locally (tests, the embedded default): byte-level, so every string round-trips,
    and LLaMA's conventions where they matter here (BOS prepended, ``</s>`` EOS, ``<unk>``). Special tokens are
    NOT added here; :func:`add_special_tokens` does that, exactly as for a real LLaMA tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    unk, bos, eos = "<unk>", "<s>", "</s>"
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[unk, bos, eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk)
