"""Running a model on a world's evaluation set: batched greedy generation with the training template, then scoring.

``prompt_format="qa"`` asks in the pretraining corpus's plain ``Question: ... Answer:`` text instead (the way
OpenFlamingo is evaluated zero-shot): what a pretrained base knows, apart from whether it follows the template.

``evaluate_world(model, tokenizer, "runs/world")`` reads the held-out scenes of a generated world; it also takes
scenes (and language tasks) in memory, rendered on the fly, for callers that never write a world to disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.data.images import ImageTransform
from mmgpt.data.templates import extract_response
from mmgpt.data.tokenize import ConversationTokenizer, tokenize_prompt
from mmgpt.data.world.corpus import PLAIN_QA, question_text
from mmgpt.data.world.language import LanguageTask
from mmgpt.data.world.render import render_scene
from mmgpt.data.world.scene import Scene
from mmgpt.data.world.write import HeldOut, load_heldout
from mmgpt.evaluate.items import EvalItem, language_items, scene_items
from mmgpt.evaluate.world import answer_correct, language_correct, summarise
from mmgpt.generate import GenerationConfig, generate
from mmgpt.model.flamingo import Flamingo
from mmgpt.tokens import END_OF_CHUNK, IMAGE

STOP_STRINGS = ("\n###",)  # a model that runs on starts a new template section
QA_STOP_STRINGS = (PLAIN_QA.next_question, END_OF_CHUNK)  # the next question, or the end of the image's text
PROMPT_FORMATS = ("template", "qa")
DEFAULT_BATCH_SIZE = 32


def qa_prompt(item: EvalItem) -> str:
    """``<image>Question: {instruction}[ {input}] Answer:`` - the form of ``pretrain/{questions,qa}.jsonl``."""
    message = item.prompt.messages[-1]
    return IMAGE * len(message.images) + PLAIN_QA.prompt(question_text(message.text, message.input))


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
    model: Flamingo,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int | None = None,
    prompt_format: str = "template",
    on_progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy responses to ``items``, in order. Batches hold items of one token budget and similar prompt length,
    so little time goes to padding and to rows that finished long ago. ``max_new_tokens`` caps every budget;
    ``prompt_format``: ``template`` (the instruction template) or ``qa`` (module docstring)."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format={prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
    transform = ImageTransform(size=model.vision_encoder.image_size)
    pixels: dict[int, torch.Tensor] = {}  # several items share a scene's image: transform it once

    def image_tensor(item: EvalItem) -> torch.Tensor | None:
        images = item.prompt.images
        if not images:
            return None
        key = id(images[0])
        if key not in pixels:
            pixels[key] = torch.stack([transform(image) for image in images])
        return pixels[key]

    if prompt_format == "qa":
        encoder = ConversationTokenizer(tokenizer)
        prompts = [encoder.prefix + ids for ids in encoder.encode([qa_prompt(item) for item in items])]
        stops, answer_of = QA_STOP_STRINGS, _qa_answer
    else:
        prompts = [tokenize_prompt(item.prompt, tokenizer).input_ids for item in items]
        stops, answer_of = STOP_STRINGS, extract_response
    order = sorted(range(len(items)), key=lambda i: (items[i].max_new_tokens, len(prompts[i])))
    responses = [""] * len(items)
    start = 0
    while start < len(order):
        budget = items[order[start]].max_new_tokens
        batch = [i for i in order[start : start + batch_size] if items[i].max_new_tokens == budget]
        cap = budget if max_new_tokens is None else min(budget, max_new_tokens)
        config = GenerationConfig(max_new_tokens=cap, temperature=0.0, stop_strings=stops)
        outputs = generate(
            model, tokenizer, [prompts[i] for i in batch], images=[image_tensor(items[i]) for i in batch], config=config
        )
        for i, output in zip(batch, outputs, strict=True):
            responses[i] = answer_of(output.text)
        start += len(batch)
        if on_progress is not None:
            on_progress(len(batch))
    return responses


def evaluate_world(
    model: Flamingo,
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
