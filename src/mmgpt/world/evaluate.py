"""Running a model on a world's evaluation set: batched greedy generation in the model's prompt style, then scoring.

``prompt_format="qa"`` asks in the pretraining corpus's plain ``Question: ... Answer:`` text instead (the way
OpenFlamingo is evaluated zero-shot): what a pretrained base knows, apart from whether it follows the template.

``evaluate_world(model, tokenizer, "runs/world")`` reads the held-out scenes of a generated world; it also takes
scenes (and language tasks) in memory, rendered on the fly, for callers that never write a world to disk.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.data.styles import get_style
from mmgpt.data.templates import Segment
from mmgpt.data.tokenize import ConversationTokenizer, tokenize_prompt
from mmgpt.evaluate.generation import DEFAULT_BATCH_SIZE, AnswerRequest, generate_answers
from mmgpt.model.contract import Evaluator, VisionLanguageModel
from mmgpt.tokens import END_OF_CHUNK, IMAGE
from mmgpt.world.corpus import PLAIN_QA, question_text
from mmgpt.world.items import EvalItem, language_items, scene_items
from mmgpt.world.language import LanguageTask
from mmgpt.world.metrics import answer_correct, language_correct, summarise
from mmgpt.world.render import render_scene
from mmgpt.world.scene import Scene
from mmgpt.world.write import HeldOut, load_heldout

QA_STOP_STRINGS = (PLAIN_QA.next_question, END_OF_CHUNK)  # the next question, or the end of the image's text
PROMPT_FORMATS = ("template", "qa")


def qa_prompt(item: EvalItem) -> str:
    """``<image>Question: {instruction}[ {input}] Answer:`` - the form of ``pretrain/{questions,qa}.jsonl``."""
    message = item.prompt.messages[-1]
    return IMAGE * len(message.images) + PLAIN_QA.prompt(question_text(message.text, message.input))


def _segments(text: str) -> list[Segment]:
    """``text`` as prompt segments: each ``<image>`` marker an image placeholder (the model's image ids)."""
    return [Segment(part) for part in re.split(f"({re.escape(IMAGE)})", text) if part]


def _qa_answer(generated: str) -> str:
    for stop in QA_STOP_STRINGS:
        generated = generated.split(stop, 1)[0]
    return generated.strip()


def _held_out(
    world: str | Path | HeldOut | Sequence[Scene], language: Sequence[LanguageTask] | None
) -> tuple[list[Scene], list[Any], list[LanguageTask]]:
    """(scenes, their images, language tasks) of any accepted ``world``; scenes in memory are rendered as
    ``mmgpt world generate`` renders them (the model's transform then resizes, as for files)."""
    if isinstance(world, (str, Path)):
        world = load_heldout(world)
    if isinstance(world, HeldOut):
        return world.scenes, list(world.images), list(world.language if language is None else language)
    scenes = list(world)
    return scenes, [render_scene(s) for s in scenes], list(language or [])


def score(item: EvalItem, response: str) -> bool | None:
    """Correctness of a response, or None for items only measured (descriptions, captions)."""
    if item.kind == "language":
        return language_correct(response, item.truth)
    if item.kind in ("description", "caption"):
        return None
    return answer_correct(item.kind, response, item.truth)


def generate_responses(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None,
    prompt_format: str = "template",
    on_progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy responses to ``items``, in order (:func:`~mmgpt.evaluate.generation.generate_answers`).
    ``max_new_tokens`` caps every budget; ``prompt_format``: ``template`` (the model's prompt style) or ``qa``
    (the module docstring)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format={prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    transform = model.image_transform()
    pixels: dict[int, torch.Tensor] = {}  # several items share a scene's image: transform it once

    def image_tensor(item: EvalItem) -> torch.Tensor | None:
        images = item.prompt.images
        if not images:
            return None
        key = id(images[0])
        if key not in pixels:
            pixels[key] = torch.stack([transform(image) for image in images])
        return pixels[key]

    fmt = model.prompt_format
    if prompt_format == "qa":
        encoder = ConversationTokenizer(tokenizer, fmt=fmt)
        prompts = [encoder.prompt(item.prompt, segments=_segments(qa_prompt(item))).input_ids for item in items]
        stops, answer_of = QA_STOP_STRINGS, _qa_answer
    else:
        style = get_style(fmt.style)
        prompts = [tokenize_prompt(item.prompt, tokenizer, fmt=fmt).input_ids for item in items]
        stops, answer_of = style.stop_strings, style.extract_response
    requests = [
        AnswerRequest(
            input_ids=ids,
            images=image_tensor(item),
            max_new_tokens=item.max_new_tokens if max_new_tokens is None else min(item.max_new_tokens, max_new_tokens),
            stop_strings=stops,
        )
        for item, ids in zip(items, prompts, strict=True)
    ]
    texts = generate_answers(model, tokenizer, requests, batch_size=batch_size, on_progress=on_progress)
    return [answer_of(text) for text in texts]


def evaluate_world(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    world: str | Path | HeldOut | Sequence[Scene],
    *,
    language: Sequence[LanguageTask] | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None,
    prompt_format: str = "template",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on a world's held-out scenes (a world folder, a :class:`HeldOut`, or scenes in memory)
    and language-only tasks (the world's, or ``language``). ``limit`` keeps the first scenes and language tasks;
    ``max_new_tokens`` caps the per-kind token budgets (a quick look; long descriptions get cut);
    ``prompt_format``: ``template`` (the instruction template, default) or ``qa`` (the module docstring).

    Returns ``{"accuracy": {kind: fraction}, "questions": {kind: n}, "description": {...}, "response_length":
    {instruction kind: words}, "language": {"accuracy", "by_task", "n"}, "items": n, "seconds": s, "records":
    [per item: kind, instruction, task, scene, prompt, truth, reference, response, correct]}``; fractions are in [0, 1].
    ``on_progress(done, total)`` is called after each generated batch.
    """
    scenes, images, tasks = _held_out(world, language)
    if limit is not None:
        scenes, images, tasks = scenes[:limit], images[:limit], tasks[:limit]
    items = [item for scene, image in zip(scenes, images, strict=True) for item in scene_items(scene, image)]
    items += language_items(tasks)
    start = time.perf_counter()
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, len(items))

    was_training = model.training
    model.eval()
    try:
        responses = generate_responses(
            model,
            tokenizer,
            items,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            prompt_format=prompt_format,
            on_progress=progress,
        )
    finally:
        model.train(was_training)
    records = [
        {
            "kind": item.kind,
            "instruction": item.instruction,
            "task": item.task,
            "scene": item.scene,
            "prompt": item.prompt.messages[-1].text,
            "truth": item.truth,
            "reference": item.reference,
            "response": response,
            "correct": score(item, response),
        }
        for item, response in zip(items, responses, strict=True)
    ]
    results = summarise(records, {scene.id: scene for scene in scenes})
    return {**results, "items": len(items), "seconds": time.perf_counter() - start, "records": records}


def world_evaluator(world: str, scenes: int) -> Evaluator:
    """The generated world's generation metrics as flat figures, for training's validation: colour, shape, count,
    position, word, reasoning accuracy; language accuracy; description precision/recall; mean detail words."""

    def evaluate(model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        r = evaluate_world(model, tokenizer, world, limit=scenes)
        figures = {kind: float(v) for kind, v in r["accuracy"].items() if v is not None}
        figures["language"] = float(r["language"]["accuracy"])
        figures.update({k: float(v) for k, v in r["description"].items() if isinstance(v, (int, float))})
        if "detail" in r["response_length"]:
            figures["detail_words"] = float(r["response_length"]["detail"])
        return figures

    return evaluate
