"""What the systems experiment measures of a tuned model: the world's metrics (``evaluate_world``), repetition in
descriptions, descriptions asked in the training template, decoding speed and the latency of a late chat turn -
each the same for every model kind, through the model contract only."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.model.contract import VisionLanguageModel

if TYPE_CHECKING:
    from mmgpt.experiments.recipes import SystemsConfig
    from mmgpt.world.write import HeldOut

_WORD = re.compile(r"[a-z0-9']+")


def repeated_ngrams(texts: Iterable[str], n: int = 3) -> float | None:
    """The share of repeated ``n``-grams, micro-averaged over ``texts``: of all word ``n``-grams (lower case,
    punctuation dropped), those that already occurred earlier in the same text. MiniGPT-4's stage-1 symptom
    ("repeated words or sentences") as a number; None when no text has ``n`` words."""
    repeated = total = 0
    for text in texts:
        words = _WORD.findall(text.lower())
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return repeated / total if total else None


def description_repetition(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Repeated 3-grams in the model's detailed descriptions and in the reference descriptions of the same scenes
    (the world's own phrasing repeats some: "is at the", "there are two")."""
    descriptions = [r for r in records if r["kind"] == "description"]
    return {
        "repeated_trigrams": repeated_ngrams(r["response"] for r in descriptions),
        "reference_repeated_trigrams": repeated_ngrams(r["reference"] for r in descriptions),
    }


@torch.inference_mode()
def decode_speed(
    model: VisionLanguageModel,
    prompt: Sequence[int],
    pixels: torch.Tensor | None,
    *,
    tokens: int = 64,
    repeats: int = 3,
) -> float:
    """Greedy decoding tokens per second after a prefill of ``prompt`` (one row, ``pixels`` [m, 3, H, W]): exactly
    ``tokens`` tokens (no stop ends it early), the median of ``repeats`` runs, prefill not counted."""
    from mmgpt.generate import GenerationConfig, decode, prefill, suppressed_ids

    config = GenerationConfig(max_new_tokens=tokens)
    speeds = []
    for _ in range(repeats):
        logits, seen, step = prefill(model, [list(prompt)], [pixels], config)
        start = time.perf_counter()
        produced = sum(
            1
            for _ in decode(
                logits, seen, step, config=config, stop_ids=set(), suppress_ids=suppressed_ids(model, set())
            )
        )
        speeds.append(produced / (time.perf_counter() - start))
    return statistics.median(speeds)


# An 8-turn chat about three held-out images (turns 1, 3 and 6), as a user would have it.
CHAT = (
    ("Describe the following image in detail.", True),
    ("What colour is the largest shape?", False),
    ("Here is another image. How many shapes are there?", True),
    ("Where is the {shape}?", False),
    ("Is there a word in the image?", False),
    ("And this one: what shapes do you see?", True),
    ("What colour is the {shape}?", False),
    ("How many shapes are there in this image?", False),
)


def chat_latency(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    images: Sequence[Path],
    *,
    shape: str = "circle",
    new_tokens: int = 24,
) -> list[dict[str, Any]]:
    """One :class:`~mmgpt.chat.ChatSession` (image features and KV cache reused across turns) through :data:`CHAT`,
    greedy, at most ``new_tokens`` per answer; per turn: wall seconds, prompt / computed / completion tokens."""
    from mmgpt.chat import ChatModel, ChatSession
    from mmgpt.generate import GenerationConfig

    session = ChatSession(ChatModel.wrap(model, tokenizer, name="systems"))
    config = GenerationConfig(max_new_tokens=new_tokens)
    pictures = iter(images)
    turns = []
    for turn, (question, with_image) in enumerate(CHAT, start=1):
        attached = [next(pictures)] if with_image else []
        start = time.perf_counter()
        reply = session.ask(question.format(shape=shape), images=attached, config=config)
        turns.append(
            {
                "turn": turn,
                "seconds": time.perf_counter() - start,
                "prompt_tokens": reply.prompt_tokens,
                "computed_tokens": reply.computed_tokens,
                "completion_tokens": reply.completion_tokens,
                "answer": reply.text,
            }
        )
    return turns


def training_template_descriptions(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    heldout: HeldOut,
    *,
    limit: int | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """The held-out description requests asked in the *training* rendering of the model's prompt style (``render``)
    instead of its generation rendering (``render_prompt``) - they differ for MiniGPT-4, trained on its stage-2
    template and served with its demo's - scored as ``evaluate_world`` scores descriptions."""
    from mmgpt.data.tokenize import ConversationTokenizer
    from mmgpt.evaluate.generation import AnswerRequest, generate_answers
    from mmgpt.world.items import scene_items
    from mmgpt.world.metrics import description_scores, response_length

    encoder, transform = ConversationTokenizer(tokenizer, fmt=model.prompt_format), model.image_transform()
    style = encoder.style
    scenes = list(zip(heldout.scenes, heldout.images, strict=True))[:limit]
    requests = []
    for scene, image in scenes:
        item = next(i for i in scene_items(scene, image) if i.kind == "description")
        ids = encoder.prompt(item.prompt, segments=style.render(item.prompt)).input_ids
        budget = item.max_new_tokens if max_new_tokens is None else min(item.max_new_tokens, max_new_tokens)
        requests.append(AnswerRequest(ids, transform(image)[None], budget, style.stop_strings))
    was_training = model.training
    model.eval()
    try:
        responses = [style.extract_response(t) for t in generate_answers(model, tokenizer, requests)]
    finally:
        model.train(was_training)
    return {
        "description": description_scores([(r, scene) for r, (scene, _) in zip(responses, scenes, strict=True)]),
        "words": statistics.mean(response_length(r) for r in responses) if responses else None,
        "repeated_trigrams": repeated_ngrams(responses),
        "responses": responses,
    }


def evaluate_run(
    model_dir: Path,
    cfg: SystemsConfig,
    world: Path,
    *,
    speed: bool,
    records: Path | None = None,
    training_template: bool = False,
) -> dict[str, Any]:
    """World metrics, repetition and, with ``speed``, decode tokens/s and the chat's per-turn latency; with
    ``training_template`` also the descriptions asked in the style's training rendering (MiniGPT-4's differs from
    its chat's). Every prompt, answer and reference goes to ``records`` (JSON)."""
    from mmgpt.data.conversation import single_turn
    from mmgpt.data.tokenize import tokenize_prompt
    from mmgpt.load import load
    from mmgpt.world.evaluate import evaluate_world
    from mmgpt.world.write import load_heldout

    model, tokenizer = load(model_dir)
    heldout = load_heldout(world)
    results = evaluate_world(model, tokenizer, heldout, limit=cfg.eval_scenes, max_new_tokens=cfg.eval_max_new_tokens)
    results.update(description_repetition(results["records"]))
    if training_template:
        results["training_template"] = training_template_descriptions(
            model, tokenizer, heldout, limit=cfg.eval_scenes, max_new_tokens=cfg.eval_max_new_tokens
        )
        for record, response in zip(
            (r for r in results["records"] if r["kind"] == "description"),
            results["training_template"].pop("responses"),
            strict=True,
        ):
            record["response_in_training_template"] = response
    if records is not None:
        records.write_text(json.dumps(results["records"], indent=1) + "\n")
    results["positions_per_image"] = model.tokens_per_image
    if speed:
        images = [heldout.images[i % len(heldout.images)] for i in range(3)]
        prompt = tokenize_prompt(
            single_turn("Describe the following image in detail.", None, images=[images[0]]),
            tokenizer,
            fmt=model.prompt_format,
        )
        pixels = model.image_transform()(images[0])[None]
        results["decode_tokens_per_s"] = decode_speed(model, prompt.input_ids, pixels, tokens=cfg.decode_tokens)
        shape = heldout.scenes[0].shapes[0].kind
        results["chat"] = chat_latency(model, tokenizer, images, shape=shape, new_tokens=cfg.chat_new_tokens)
    return results
