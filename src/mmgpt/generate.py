"""Generation: the one decoding loop behind every face - batches, streams, chat turns, the HTTP API.

:func:`decode` is the loop: one seeding, one suppression of ids that must never be generated, stop ids, stop
strings and finish reasons, for any model of the contract. Its callers only prefill: :func:`generate` and
:func:`stream` run a batch of prompts with their images; ``chat`` continues a conversation's cache. The prompt
(and its images) run once; then each step feeds only the new tokens - the KV cache holds the rest, and what a model
derives from each image is computed once per generation (``Media``), never at every step as the reference
implementation of MultiModal-GPT did.

Legend: b batch (rows after ``num_return_sequences``), T prompt tokens, S tokens so far, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.detokenize import RowText
from mmgpt.model.contract import ModelOutput, VisionLanguageModel

FinishReason = Literal["stop", "length", "cancelled"]
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class GenerationConfig:
    """Decoding settings. ``temperature == 0`` is greedy decoding; otherwise sampling with the filters below."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off; > 1 discourages tokens already in prompt or output
    stop_token_ids: tuple[int, ...] = ()  # EOS always stops
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be >= 1"),
            (self.temperature >= 0, f"temperature={self.temperature} must be >= 0 (0 = greedy)"),
            (self.top_k >= 0, f"top_k={self.top_k} must be >= 0 (0 = off)"),
            (0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]"),
            (self.repetition_penalty > 0, f"repetition_penalty={self.repetition_penalty} must be > 0"),
            (
                self.num_return_sequences >= 1,
                f"num_return_sequences={self.num_return_sequences} must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.num_return_sequences > 1 and self.temperature == 0:
            raise ValueError("num_return_sequences > 1 needs sampling (temperature > 0); greedy copies are equal")


@dataclass
class Generation:
    token_ids: list[int]  # generated tokens, without the stop token
    text: str  # decoded, cut before a stop string
    finish_reason: FinishReason
    prompt_tokens: int


# ---------------------------------------------------------------------------------------------- batching
def pad_left(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> input_ids [b, T], attention_mask [b, T] (so every row ends at the same column)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def stack_images(images: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Per-row image tensors [m_i, 3, H, W] (or None) -> images [b, m, 1, 3, H, W] zero-padded, counts [b]."""
    counts = torch.tensor([0 if x is None else x.shape[0] for x in images], dtype=torch.long)
    shapes = {tuple(x.shape[1:]) for x in images if x is not None and x.shape[0]}
    if not shapes:
        return None, counts
    bad = [x.shape for x in images if x is not None and x.dim() != 4]
    if bad or len(shapes) > 1:
        raise ValueError(f"each row's images must be one tensor [images, 3, H, W] of the same H, W; got {shapes}")
    (shape,) = shapes
    out = torch.zeros(len(images), int(counts.max()), 1, *shape)
    for row, x in enumerate(images):
        if x is not None and x.shape[0]:
            out[row, : x.shape[0], 0] = x
    return out, counts


# ---------------------------------------------------------------------------------------------- sampling
def next_tokens(
    logits: torch.Tensor, seen: torch.Tensor | None, config: GenerationConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """logits [b, V] (float32), seen [b, S] token ids so far (read for the repetition penalty only: None without
    one) -> next token ids [b]."""
    if config.repetition_penalty != 1.0:
        assert seen is not None, "the repetition penalty needs the ids so far"
        # Image positions (negative ids of prefix models) are not tokens: they are never penalised.
        valid = seen >= 0
        hits = torch.zeros_like(logits).scatter_add_(1, seen.clamp(min=0), valid.to(logits.dtype)) > 0
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(hits, penalised, logits)
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / config.temperature
    if config.top_k:
        kth = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Keep the smallest set of tokens whose probability reaches top_p (the most likely one always stays).
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


# ---------------------------------------------------------------------------------------------- the loop
def make_generator(config: GenerationConfig, device: torch.device) -> torch.Generator | None:
    """The one random source of a generation: seeded when ``config.seed`` is set, fresh otherwise; greedy needs none.
    A generation never touches the global RNG, so concurrent generations do not disturb each other."""
    if config.temperature == 0:
        return None
    generator = torch.Generator(device=device)
    if config.seed is None:
        generator.seed()
    else:
        generator.manual_seed(config.seed)
    return generator


@torch.no_grad()
def decode(
    logits: torch.Tensor,
    seen: torch.Tensor,
    step: Step,
    *,
    config: GenerationConfig,
    stop_ids: set[int],
    suppress_ids: Sequence[int] = (),
    should_stop: Callable[[int, list[int]], bool] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The decoding loop. ``logits`` [b, V]: the prefill's last position; ``seen`` [b, S]: the ids so far (for the
    repetition penalty); ``step(tokens [b, 1], mask [b, 1]) -> logits [b, V]`` runs the model on the chosen tokens
    (the caller keeps the cache).

    Yields, per step, (tokens [b], alive [b]): the token chosen for each row (-1 for a row that had already
    stopped) and whether the row still runs. A row stops at a stop id (the stop token is yielded with alive
    False), at ``should_stop(row, tokens)``, or after ``max_new_tokens``; ``step`` is not called after the last.
    """
    device = logits.device
    generator = make_generator(config, device)
    alive = torch.ones(seen.shape[0], dtype=torch.bool, device=device)
    generated: list[list[int]] = [[] for _ in range(seen.shape[0])]
    suppress = torch.tensor(list(suppress_ids), dtype=torch.long, device=device)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    for position in range(config.max_new_tokens):
        logits = logits.float()
        if suppress.numel():
            logits[:, suppress] = float("-inf")
        tokens = next_tokens(logits, seen, config, generator)
        tokens = torch.where(alive, tokens, torch.zeros_like(tokens))
        was_alive = alive.clone()
        alive &= ~torch.isin(tokens, stop)
        for row in was_alive.nonzero().flatten().tolist():
            if alive[row]:
                generated[row].append(int(tokens[row]))
                if should_stop is not None and should_stop(row, generated[row]):
                    alive[row] = False
        yield tokens.where(was_alive, torch.full_like(tokens, -1)), alive.clone()
        if not bool(alive.any()) or position == config.max_new_tokens - 1:
            return
        seen = torch.cat([seen, tokens[:, None]], dim=1)
        logits = step(tokens[:, None], alive[:, None].long())


def run_prompts(
    model: VisionLanguageModel, prompts: Sequence[Sequence[int]], images: Sequence[torch.Tensor | None]
) -> tuple[ModelOutput, torch.Tensor]:
    """A batch of token-list prompts with per-row images, run once (left padding, image stacking): the model's
    output (logits [b, T, V] and the cache to continue from) and the padded ids [b, T] on the model's device."""
    device = model.device
    input_ids, attention_mask = pad_left(prompts, model.special.pad)
    pixels, counts = stack_images(images)
    out = model(
        input_ids.to(device),
        images=None if pixels is None else pixels.to(device),
        image_counts=counts,
        attention_mask=attention_mask.to(device),
        use_cache=True,
    )
    return out, input_ids.to(device)


def prefill(
    model: VisionLanguageModel,
    prompts: Sequence[Sequence[int]],
    images: Sequence[torch.Tensor | None],
    config: GenerationConfig,
) -> tuple[torch.Tensor, torch.Tensor, Step]:
    """Run a batch of token-list prompts with per-row images (left padding, image stacking) once; returns the
    last logits [b, V], the ids so far [b, T] and the step function that continues their cache. Rows are
    ``num_return_sequences`` copies of each prompt, prefilled once."""
    device = model.device
    out, input_ids = run_prompts(model, prompts, images)
    logits, cache, seen = out.logits[:, -1], out.cache, input_ids
    if config.num_return_sequences > 1:
        rows = torch.arange(input_ids.shape[0], device=device).repeat_interleave(config.num_return_sequences)
        logits, seen, cache = logits[rows], seen[rows], cache.select(rows)
    state = {"cache": cache}

    def step(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = model(tokens, attention_mask=mask, cache=state["cache"], use_cache=True)
        state["cache"] = out.cache
        return out.logits[:, -1]

    return logits, seen, step


def stop_ids_of(tokenizer: PreTrainedTokenizerBase, config: GenerationConfig) -> set[int]:
    return {tokenizer.eos_token_id, *config.stop_token_ids} - {None}


def suppressed_ids(model: VisionLanguageModel, stop_ids: set[int]) -> list[int]:
    """Never generate what the model says must never be generated (an image placeholder, padding), unless it is
    also a stop token."""
    return sorted(t for t in model.never_generate() if t not in stop_ids)


def _decode_prompts(
    model: VisionLanguageModel,
    prompts: Sequence[Sequence[int]],
    images: Sequence[torch.Tensor | None],
    config: GenerationConfig,
    stop_ids: set[int],
    should_stop: Callable[[int, list[int]], bool] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    logits, seen, step = prefill(model, prompts, images, config)
    return decode(
        logits,
        seen,
        step,
        config=config,
        stop_ids=stop_ids,
        suppress_ids=suppressed_ids(model, stop_ids),
        should_stop=should_stop,
    )


def generate(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    images: Sequence[torch.Tensor | None] | None = None,
    config: GenerationConfig | None = None,
) -> list[Generation]:
    """Generate for a batch of tokenised prompts, each with its own images ([m_i, 3, H, W] or None).

    Returns ``len(prompts) * num_return_sequences`` generations, the copies of each prompt adjacent.
    """
    config = config or GenerationConfig()
    images = [None] * len(prompts) if images is None else list(images)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but images for {len(images)} rows")
    stop_ids = stop_ids_of(tokenizer, config)
    texts = [RowText(tokenizer, config.stop_strings) for _ in range(len(prompts) * config.num_return_sequences)]

    def hit_stop_string(row: int, tokens: list[int]) -> bool:
        texts[row].update(tokens)
        return texts[row].stopped

    results: list[list[int]] = [[] for _ in texts]
    finish: list[FinishReason] = ["length"] * len(texts)
    should_stop = hit_stop_string if config.stop_strings else None
    for tokens, _ in _decode_prompts(model, prompts, images, config, stop_ids, should_stop):
        for row, token in enumerate(tokens.tolist()):
            if token < 0:
                continue
            if token in stop_ids or texts[row].stopped:
                finish[row] = "stop"
            if token not in stop_ids:
                results[row].append(token)
    generations = []
    for row, ids in enumerate(results):
        texts[row].update(ids)
        prompt_len = len(prompts[row // config.num_return_sequences])
        generations.append(Generation(ids, texts[row].text, finish[row], prompt_len))
    return generations


def take_token(
    token: int, tokens: list[int], text: RowText, stop_ids: set[int], max_new_tokens: int
) -> tuple[str, FinishReason | None]:
    """A streamed row's next token - the one rule of every streaming path (:func:`stream_text`, the scheduler's
    rows): appended to ``tokens`` unless it is a stop id; returns the text that became final ("" when none) and
    why the row stops there (a stop id or stop string, ``max_new_tokens``), or None when it goes on."""
    if token in stop_ids:
        return "", "stop"
    tokens.append(token)
    text.update(tokens)
    if text.stopped:
        return text.delta(), "stop"
    return text.delta(), ("length" if len(tokens) >= max_new_tokens else None)


def stream_text(
    steps: Iterator[tuple[torch.Tensor, torch.Tensor]],
    text: RowText,
    stop_ids: set[int],
    tokens: list[int],
    max_new_tokens: int,
) -> Iterator[str]:
    """Text deltas of row 0 of ``steps`` as soon as they are final; the generated ids (stop token excluded) are
    appended to ``tokens``. Returns (as the generator's value) the finish reason. It stops reading ``steps`` at a
    stop string too, so the loop runs no step past it."""
    finish: FinishReason | None = None
    for step, _ in steps:
        token = int(step[0])
        if token < 0:
            break
        delta, finish = take_token(token, tokens, text, stop_ids, max_new_tokens)
        if delta:
            yield delta
        if finish is not None:
            break
    if rest := text.remainder():
        yield rest
    return finish or "length"


def stream(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[int],
    *,
    images: torch.Tensor | None = None,
    config: GenerationConfig | None = None,
) -> Iterator[str]:
    """Generate for one prompt, yielding text deltas as soon as they are final (joined, they equal the text of
    :func:`generate` with the same config and seed)."""
    config = config or GenerationConfig()
    if config.num_return_sequences != 1:
        raise ValueError("stream() produces one sequence; use generate() for num_return_sequences > 1")
    stop_ids = stop_ids_of(tokenizer, config)
    steps = _decode_prompts(model, [prompt], [images], config, stop_ids, None)
    yield from stream_text(steps, RowText(tokenizer, config.stop_strings), stop_ids, [], config.max_new_tokens)
