"""From a DataConfig to training batches: one vision-language batch per step, paired with a language-only
batch on ``language_ratio`` of the steps, sharded by rank and resumable mid-epoch.

conversation stream (mixture.ShardedStream) -> tokenize (drops counted per source) -> the model's image transform
-> collate -> Batch. An image that cannot be decoded stops the run with a :class:`BrokenImageError` naming the
file, source, row and field (``on_error: raise``, the default) or, with ``on_error: skip`` on its source, drops the
sample, counted and named per source (:meth:`PairedBatches.skipped`; the trainer prints it at the end and writes it
to metrics.jsonl). Everything runs in the calling process: at the paper's batch of one sample per GPU, preparing a
sample (~10 ms) is small beside a 7B forward/backward, and the position of the data is then exactly what the
trainer consumed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mmgpt.data.collate import Batch, collate
from mmgpt.data.config import ConfigError, DataConfig, SourceConfig
from mmgpt.data.conversation import Conversation
from mmgpt.data.images import ImageError, ImageTransform
from mmgpt.data.mixture import Pool, ShardedStream, build_pool, takes_language
from mmgpt.data.sources import SourceError, SourceStats, read_source
from mmgpt.data.sources.read import EXAMPLES_KEPT, BrokenImageError, locate_image
from mmgpt.data.tokenize import ConversationTokenizer, SampleDropped
from mmgpt.tokens import FLAMINGO_FORMAT, PromptFormat, special_token_ids


def read_pool(
    cfg: DataConfig, sources: list[SourceConfig], *, stats: dict[str, SourceStats] | None = None
) -> Pool[Conversation]:
    """Every conversation of ``sources``, capped per source with the config's seed."""
    loaded = []
    for source in sources:
        source_stats = SourceStats(source.name)
        conversations = list(read_source(source, resolve=cfg.resolve, stats=source_stats))
        if stats is not None:
            stats[source.name] = source_stats
        loaded.append((source.name, conversations, source.cap))
    return build_pool(loaded, seed=cfg.seed)


class NoSamplesError(SourceError):
    """A whole pass over a stream gave no sample (every one dropped or skipped): the run cannot take a step."""


class BatchStream:
    """Endless batches of ``batch_size`` samples from a conversation stream; ``dropped`` counts per source why
    samples were left out and ``examples`` names a few. Its position is its stream's: between batches no sample is
    held back. ``sources`` (by name) decide what a broken image does (their ``on_error``); ``resolve`` finds their
    files to name the row of one that stops the run."""

    def __init__(
        self,
        stream: ShardedStream[Conversation],
        *,
        tokenize: ConversationTokenizer,
        image_transform: ImageTransform,
        batch_size: int,
        pad_id: int,
        sources: dict[str, SourceConfig] | None = None,
        resolve: Callable[[str], Path] | None = None,
    ) -> None:
        self.stream, self.tokenize, self.image_transform = stream, tokenize, image_transform
        self.batch_size, self.pad_id = batch_size, pad_id
        self.sources, self.resolve = sources or {}, resolve
        self.dropped: dict[str, Counter[str]] = {}
        self.examples: dict[str, list[str]] = {}

    def _drop(self, source: str, reason: str, example: str) -> None:
        self.dropped.setdefault(source, Counter())[reason] += 1
        examples = self.examples.setdefault(source, [])
        if len(examples) < EXAMPLES_KEPT and example not in examples:
            examples.append(example)

    def _broken(self, conversation: Conversation, error: ImageError) -> None:
        """Skip and count, or stop with the file, source, row and field (the row is found by reading again)."""
        source = self.sources.get(conversation.source)
        if source is not None and source.on_error == "skip":
            self._drop(source.name, "broken image", str(error))
            return
        found = locate_image(source, self.resolve, error.path) if source and self.resolve else None
        if found is None:
            named = f"source {conversation.source!r}" if conversation.source else "the data"
            raise BrokenImageError(named, f"sample {conversation.id or '(no id)'}", None, error) from None
        raise BrokenImageError(*found, error) from None

    def state_dict(self) -> dict[str, Any]:
        counts = {source: dict(reasons) for source, reasons in self.dropped.items()}
        return {"stream": self.stream.state_dict(), "dropped": counts, "examples": dict(self.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "stream" not in state:  # a checkpoint from before drops were counted per source: the position only
            self.stream.load_state_dict(state)
            return
        self.stream.load_state_dict(state["stream"])
        self.dropped = {source: Counter(reasons) for source, reasons in state["dropped"].items()}
        self.examples = {source: list(examples) for source, examples in state["examples"].items()}

    def __iter__(self) -> Iterator[Batch]:
        samples = []
        dropped_in_a_row = 0
        for conversation in self.stream:
            try:
                sample = self.tokenize(conversation)
                sample = replace(sample, images=[self.image_transform(image) for image in sample.images])
            except SampleDropped as dropped:
                self._drop(conversation.source, dropped.reason.replace("_", " "), str(dropped))
                dropped_in_a_row += 1
            except ImageError as error:
                self._broken(conversation, error)
                dropped_in_a_row += 1
            else:
                dropped_in_a_row = 0
                samples.append(sample)
                if len(samples) == self.batch_size:
                    yield collate(samples, self.pad_id, padding_side="right")
                    samples = []
            if dropped_in_a_row > self.stream.shard_size:
                counts = {source: dict(reasons) for source, reasons in self.dropped.items()}
                raise NoSamplesError(
                    f"every sample of stream {self.stream.name!r} is dropped ({counts}); "
                    "run `mmgpt data check` on this configuration"
                )


@dataclass
class PairedBatch:
    """One training step's data. ``state`` is the data position after this step: restoring it with
    :meth:`PairedBatches.load_state_dict` resumes with the next step's samples."""

    vision_language: Batch
    language: Batch | None
    step: int
    state: dict[str, Any]


class PairedBatches:
    """Endless steps; ``steps_per_epoch`` is one pass over this rank's share of the vision-language pool."""

    def __init__(self, vision_language: BatchStream, language: BatchStream | None, *, ratio: float) -> None:
        self.vision_language, self.language, self.ratio = vision_language, language, ratio
        self.step = 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.vision_language.stream.shard_size // self.vision_language.batch_size)

    def __iter__(self) -> Iterator[PairedBatch]:
        vision_language = iter(self.vision_language)
        language = iter(self.language) if self.language is not None else None
        while True:
            vl_batch = next(vision_language)
            lo_batch = next(language) if language is not None and takes_language(self.step, self.ratio) else None
            self.step += 1
            yield PairedBatch(vl_batch, lo_batch, self.step - 1, self.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "vision_language": self.vision_language.state_dict(),
            "language": None if self.language is None else self.language.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position (and the drop counts so far); call before iterating."""
        self.step = state["step"]
        self.vision_language.load_state_dict(state["vision_language"])
        if self.language is not None and state["language"] is not None:
            self.language.load_state_dict(state["language"])

    def skipped(self) -> dict[str, dict[str, Any]]:
        """Per source: {"counts": {reason: samples}, "examples": [...]} of the samples left out so far."""
        out: dict[str, dict[str, Any]] = {}
        for stream in (self.vision_language, self.language):
            for source, reasons in stream.dropped.items() if stream is not None else ():
                entry = out.setdefault(source, {"counts": {}, "examples": []})
                for reason, count in reasons.items():
                    entry["counts"][reason] = entry["counts"].get(reason, 0) + count
                entry["examples"] += stream.examples.get(source, [])
        return out


def build_training_batches(
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    rank: int = 0,
    world_size: int = 1,
    image_transform: ImageTransform | None = None,
    fmt: PromptFormat = FLAMINGO_FORMAT,
    pad_id: int | None = None,
    stats: dict[str, SourceStats] | None = None,
) -> PairedBatches:
    """The paired, sharded, resumable batches of ``cfg`` for one rank (every rank reads the same files).

    A model's run passes its ``image_transform()``, ``prompt_format`` and ``special.pad``; without them the data
    is prepared for a Flamingo (the tokenizer's ``<image>`` and ``<PAD>``, CLIP's transform at ``image_size``)."""
    if not cfg.vision_language:
        raise ConfigError("the data config has no vision_language sources; each step needs one such batch")
    if cfg.language_ratio > 0 and not cfg.language:
        raise ConfigError("language_ratio > 0 but no language sources; add some or set language_ratio: 0")
    tokenize = ConversationTokenizer(tokenizer, fmt=fmt, max_length=cfg.max_length)
    transform = image_transform or ImageTransform(size=cfg.image_size, max_pixels=cfg.max_image_pixels)
    pad_id = special_token_ids(tokenizer).pad if pad_id is None else pad_id

    def batches(name: str, sources: list[SourceConfig], batch_size: int) -> BatchStream:
        pool = read_pool(cfg, sources, stats=stats)
        stream = ShardedStream(pool.items, seed=cfg.seed, name=name, rank=rank, world_size=world_size)
        return BatchStream(
            stream,
            tokenize=tokenize,
            image_transform=transform,
            batch_size=batch_size,
            pad_id=pad_id,
            sources={source.name: source for source in sources},
            resolve=cfg.resolve,
        )

    vision_language = batches("vision_language", cfg.vision_language, cfg.batch_size)
    language = (
        batches("language", cfg.language, cfg.language_batch_size) if cfg.language and cfg.language_ratio else None
    )
    return PairedBatches(vision_language, language, ratio=cfg.language_ratio)


def merge_skipped(read: dict[str, SourceStats], dropped: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per source, what a run's data left out: rows skipped while reading (``read``: the same on every rank; their
    reasons end in "(rows)") plus each rank's :meth:`PairedBatches.skipped` (summed). Sources without any are
    absent: {source: {"counts": {reason: n}, "examples": [...]}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, stats in read.items():
        if stats.skipped:
            examples = [example for reason in stats.skipped for example in stats.examples.get(reason, [])]
            out[name] = {"counts": {f"{r} (rows)": n for r, n in stats.skipped.items()}, "examples": examples}
    for rank in dropped:
        for name, entry in rank.items():
            mine = out.setdefault(name, {"counts": {}, "examples": []})
            for reason, count in entry["counts"].items():
                mine["counts"][reason] = mine["counts"].get(reason, 0) + count
            mine["examples"] += [e for e in entry["examples"] if e not in mine["examples"]][:EXAMPLES_KEPT]
    return out
