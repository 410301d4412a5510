"""Rendered segments -> ``input_ids[T]``, ``labels[T]`` and the images their ``<image>`` tokens stand for.

Rules (reference.md sections 4-5):

- one BOS at the start of the sequence (when the tokenizer's own convention adds one), never one per turn;
- every label is IGNORE_INDEX except the tokens of each response and the EOS that closes it; a trained label
  equals its input id (labels are NOT shifted here: ``train/loss.py`` shifts them, in one place);
- each image is the ids the model gives for one image (``PromptFormat.image_tokens``): Flamingo's one
  ``<image>`` token (the default, read from the tokenizer), or a prefix model's run of ``IMAGE_POSITION`` ids;
- truncation keeps the first ``max_length`` tokens and the images whose placeholders survived whole, so a
  placeholder is never separated from its image;
- a sample that cannot train is not returned: :class:`SampleDropped` is raised with a ``reason``
  (``"fully_masked"`` when truncation leaves no response token - the usual cause of NaN or zero losses -,
  ``"image_mismatch"`` when the text itself holds a literal ``<image>``). Callers count and skip them.

Conversations are rendered by the model's prompt style (``data/styles/``). Each segment is tokenised on its own
and the pieces are concatenated: the label boundaries are then exact, whatever the tokenizer would merge across
them (MiniGPT-4 and mPLUG-Owl tokenised per segment too), and ``tokenize_prompt`` - which the chat module uses -
yields exactly the tokens the model saw in training for the same history.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from mmgpt.data.conversation import Conversation, ImageRef
from mmgpt.data.document import Document
from mmgpt.data.styles import get_style
from mmgpt.data.templates import HEADER, INSTRUCTION_SECTION, SECTION_BREAK, Segment
from mmgpt.tokens import FLAMINGO_FORMAT, IGNORE_INDEX, IMAGE, PromptFormat

DropReason = Literal["fully_masked", "image_mismatch"]
DEFAULT_MAX_LENGTH = 512  # the paper's maximum tokens per sample


class SampleDropped(ValueError):
    """A conversation that yields no trainable sample; ``reason`` says why (see the module docstring), ``detail``
    the problem and the fix without naming the conversation (``where``), for faces that show it to its author."""

    def __init__(self, reason: DropReason, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.reason: DropReason = reason
        self.detail = detail


@dataclass(frozen=True)
class TokenizedSample:
    """One sample, ready for ``collate``.

    input_ids[T], labels[T] (IGNORE_INDEX or equal to input_ids), images[m] in ``<image>`` order with
    m == input_ids.count(image id). ``full_length`` is T before truncation.
    """

    input_ids: list[int]
    labels: list[int]
    images: list[ImageRef] = field(default_factory=list)
    truncated: bool = False
    full_length: int = 0
    source: str = ""
    id: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


class ConversationTokenizer:
    """Tokenises conversations with one tokenizer in one prompt format; build it once.

    ``fmt``: the model's prompt style and image ids (``model.prompt_format``; the default is MultiModal-GPT's style
    with the tokenizer's ``<image>`` token). ``add_bos=None`` follows the prompt style when it says (a style's
    ``bos`` attribute: mPLUG-Owl's training code prepended BOS although its tokenizer adds none), else the
    tokenizer: a BOS is prepended when the tokenizer itself prepends one (LLaMA does; GPT-NeoX and MPT do not).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        fmt: PromptFormat = FLAMINGO_FORMAT,
        max_length: int = DEFAULT_MAX_LENGTH,
        add_bos: bool | None = None,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (a prompt token and an answer token), got {max_length}")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no EOS token; every response ends with EOS, so one is required")
        self.tokenizer = tokenizer
        self.style = get_style(fmt.style)
        self.max_length = max_length
        self.image_tokens = list(fmt.image_tokens) if fmt.image_tokens is not None else [_image_id(tokenizer)]
        if not self.image_tokens or len(set(self.image_tokens)) != 1:
            raise ValueError(f"an image must be a run of one placeholder id, got {fmt.image_tokens}")
        self.image_id = self.image_tokens[0]
        self.eos_id = tokenizer.eos_token_id
        bos = tokenizer.bos_token_id
        if add_bos is None:
            add_bos = self.style.bos
        if add_bos is None:
            probe = tokenizer("a")["input_ids"]
            add_bos = bos is not None and bool(probe) and probe[0] == bos
        if add_bos and bos is None:
            raise ValueError("add_bos=True but the tokenizer has no BOS token")
        self.prefix: list[int] = [bos] if add_bos and bos is not None else []
        self._backend = self._equivalent_backend(tokenizer)

    @staticmethod
    def _equivalent_backend(tokenizer: PreTrainedTokenizerBase):  # -> tokenizers.Tokenizer | None
        """The Rust tokenizer behind a fast tokenizer, if it encodes exactly as the Python wrapper does.

        Calling it directly skips the wrapper's per-text bookkeeping (offsets, masks): a third less time on
        large files. A wrapper that preprocesses text itself gives different ids on the probe and is kept.
        """
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return None
        probe = [HEADER + SECTION_BREAK + INSTRUCTION_SECTION, " Héllo  wörld\n", f"x{IMAGE}\n y", ""]
        wrapper = tokenizer(probe, add_special_tokens=False)["input_ids"]
        direct = [e.ids for e in backend.encode_batch_fast(probe, add_special_tokens=False)]
        return backend if direct == wrapper else None

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of plain texts: no template, no BOS (``prefix`` holds it), ``<image>`` as its one token."""
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _assemble(
        self, conversation: Conversation, segments: list[Segment], encoded: Sequence[list[int]], *, train: bool
    ) -> TokenizedSample:
        input_ids = list(self.prefix)
        labels = [IGNORE_INDEX] * len(input_ids)
        pieces = iter(encoded)
        for segment in segments:
            if segment.is_image:
                input_ids.extend(self.image_tokens)
                labels.extend([IGNORE_INDEX] * len(self.image_tokens))
                continue
            ids = next(pieces)
            if segment.response and segment.eos:
                ids = [*ids, self.eos_id]
            input_ids.extend(ids)
            labels.extend(ids if segment.response and train else [IGNORE_INDEX] * len(ids))

        images = conversation.images
        where = f"conversation {conversation.id or '(no id)'}" + (
            f" of {conversation.source}" if conversation.source else ""
        )
        per_image = len(self.image_tokens)
        n_tokens = input_ids.count(self.image_id)
        if n_tokens != len(images) * per_image:
            raise SampleDropped(
                "image_mismatch",
                where,
                f"{n_tokens // per_image} <image> tokens for {len(images)} images; the text itself contains "
                "a literal '<image>' - remove it from the message text and attach the image to the message instead",
            )
        full_length = len(input_ids)
        truncated = train and full_length > self.max_length
        if truncated:
            # Never keep part of an image: a cut inside a run of placeholders moves before that run.
            end = self.max_length - input_ids[: self.max_length].count(self.image_id) % per_image
            input_ids = input_ids[:end]
            labels = labels[:end]
            images = images[: input_ids.count(self.image_id) // per_image]
        if train and labels.count(IGNORE_INDEX) == len(labels):
            raise SampleDropped(
                "fully_masked",
                where,
                f"no response token left within max_length={self.max_length} "
                f"(the sample has {full_length} tokens); raise max_length or shorten the prompt",
            )
        return TokenizedSample(
            input_ids=input_ids,
            labels=labels,
            images=list(images),
            truncated=truncated,
            full_length=full_length,
            source=conversation.source,
            id=conversation.id,
        )

    def __call__(self, conversation: Conversation | Document) -> TokenizedSample:
        """A training sample; raises :class:`SampleDropped`."""
        segments = self._segments(conversation)
        encoded = self.encode([s.text for s in segments if not s.is_image])
        return self._assemble(conversation, segments, encoded, train=True)

    def many(self, conversations: Sequence[Conversation]) -> list[TokenizedSample | SampleDropped]:
        """Tokenise a chunk in one tokenizer call (several times faster on large files than one by one).

        Each result is a sample or the :class:`SampleDropped` it would have raised, in input order.
        """
        rendered = [self._segments(c) for c in conversations]
        texts = [s.text for segments in rendered for s in segments if not s.is_image]
        encoded = self.encode(texts)
        results: list[TokenizedSample | SampleDropped] = []
        start = 0
        for conversation, segments in zip(conversations, rendered, strict=True):
            n = sum(not s.is_image for s in segments)
            try:
                results.append(self._assemble(conversation, segments, encoded[start : start + n], train=True))
            except SampleDropped as dropped:
                results.append(dropped)
            start += n
        return results

    def _segments(self, sample: Conversation | Document) -> list[Segment]:
        return sample.segments() if isinstance(sample, Document) else self.style.render(sample)

    def prompt(self, conversation: Conversation, *, segments: list[Segment] | None = None) -> TokenizedSample:
        """A generation prompt (history + new user turn, ending where the answer starts), untruncated and with
        every label IGNORE_INDEX. Same tokens as training produced for the same history. ``segments``: the
        conversation rendered otherwise (its images in order) - in the style's training rendering, or in another
        layout's text; default the style's ``render_prompt``."""
        segments = self.style.render_prompt(conversation) if segments is None else segments
        encoded = self.encode([s.text for s in segments if not s.is_image])
        return self._assemble(conversation, segments, encoded, train=False)


def _image_id(tokenizer: PreTrainedTokenizerBase) -> int:
    image = tokenizer.get_vocab().get(IMAGE)
    if image is None:
        raise ValueError(
            f"the tokenizer has no {IMAGE!r} token and no image ids were given; call "
            "mmgpt.tokens.add_special_tokens(tokenizer) for a Flamingo, or pass the model's prompt_format"
        )
    return image


_cache: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[tuple, ConversationTokenizer]] = (
    weakref.WeakKeyDictionary()
)


def _cached(tokenizer: PreTrainedTokenizerBase, max_length: int, fmt: PromptFormat) -> ConversationTokenizer:
    # Keyed on the vocabulary size as well, so adding tokens after a first call cannot leave stale ids.
    per_tokenizer = _cache.setdefault(tokenizer, {})
    key = (len(tokenizer), max_length, fmt)
    if key not in per_tokenizer:
        per_tokenizer[key] = ConversationTokenizer(tokenizer, fmt=fmt, max_length=max_length)
    return per_tokenizer[key]


def tokenize_conversation(
    conversation: Conversation,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = DEFAULT_MAX_LENGTH,
    *,
    fmt: PromptFormat = FLAMINGO_FORMAT,
) -> TokenizedSample:
    """A training sample of ``conversation``; raises :class:`SampleDropped` (see the module docstring)."""
    return _cached(tokenizer, max_length, fmt)(conversation)


def tokenize_prompt(
    conversation: Conversation, tokenizer: PreTrainedTokenizerBase, *, fmt: PromptFormat = FLAMINGO_FORMAT
) -> TokenizedSample:
    """The tokens of a generation prompt in ``fmt`` (the model's ``prompt_format``); see
    :meth:`ConversationTokenizer.prompt`."""
    return _cached(tokenizer, DEFAULT_MAX_LENGTH, fmt).prompt(conversation)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local folder (``save_pretrained`` output, or a LLaMA ``tokenizer.model`` folder), with
    Flamingo's special tokens added (what data tools that run without a model tokenise for)."""
    from mmgpt.tokens import add_special_tokens, read_tokenizer

    if not Path(path).expanduser().is_dir():
        # Checked here: from_pretrained would take a missing folder for a Hub id and try the network.
        raise ValueError(f"{path}: no such tokenizer folder; point 'tokenizer:' at a save_pretrained folder")
    try:
        tokenizer = read_tokenizer(path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot load a tokenizer from {path!r} ({error}); point 'tokenizer:' at a folder written by "
            "tokenizer.save_pretrained (e.g. the LLaMA-7B folder)"
        ) from None
    add_special_tokens(tokenizer)
    return tokenizer
