"""OwlEval (mPLUG-Owl's visually-related instruction set, ``OwlEval/questions.jsonl`` + ``cases/*.jpg``): every
question answered by one model and written as ``OwlEval/answer/*.jsonl`` is, one file per model, for side-by-side
judgement by people (no automatic scorer exists).

Any model of the contract answers: each question is rendered by the model's own prompt style (what it was tuned
on), its image transformed by the model's encoder, and answered by greedy batched generation, cut at the style's
stop strings and cleaned by its ``extract_response``. Questions marked ``multi_turn`` about one image are asked in
file order in one conversation: turn k's prompt holds the earlier questions with the model's own answers, the image
on the first. Conversations advance together, one batch of prompts per turn.

Legend: m images of a prompt (1 here), H/W the encoder's image size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.styles import get_style
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.evaluate.benchmarks.items import ItemId, OpenEndedItem
from mmgpt.evaluate.benchmarks.open_ended import conversations, read_owleval, write_owleval_answers
from mmgpt.evaluate.generation import AnswerRequest, generate_answers
from mmgpt.model.contract import VisionLanguageModel

# OwlEval's answers are paragraphs; the original's max_length was 512 (prompt included).
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_BATCH_SIZE = 8


def answer_owleval(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[OpenEndedItem],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
    prompt_ids: Callable[[OpenEndedItem, list[tuple[str, str]]], list[int]] | None = None,
) -> dict[ItemId, str]:
    """question_id -> the model's answer, for OwlEval items (``read_owleval``); see the module docstring.
    ``prompt_ids(item, history)``: the prompt of a question after the earlier (question, answer) turns of its
    conversation (default: the questions as written, in the model's chat template; the harness passes its own
    query builder, so the prompt it records is the one asked)."""
    style = get_style(model.prompt_format.style)
    transform = model.image_transform()
    groups = conversations(items)
    pixels: dict[Path, torch.Tensor] = {}
    answers: dict[ItemId, str] = {}
    for turn in range(max((len(group) for group in groups), default=0)):
        live = [group for group in groups if len(group) > turn]
        requests = []
        for group in live:
            image = group[0].image
            if image not in pixels:
                pixels[image] = transform(image)[None]  # [1, 3, H, W]
            history = [(earlier.question, answers[earlier.key]) for earlier in group[:turn]]
            if prompt_ids is not None:
                ids = prompt_ids(group[turn], history)
            else:
                messages: list[Message] = []
                for k, (question, answer) in enumerate([*history, (group[turn].question, None)]):
                    messages.append(Message("user", question, (image,) if k == 0 else ()))
                    if answer is not None:
                        messages.append(Message("assistant", answer))
                ids = tokenize_prompt(Conversation(messages), tokenizer, fmt=model.prompt_format).input_ids
            requests.append(AnswerRequest(ids, pixels[image], max_new_tokens, style.stop_strings))
        texts = generate_answers(model, tokenizer, requests, batch_size=batch_size, on_progress=on_progress)
        for group, text in zip(live, texts, strict=True):
            answers[group[turn].key] = style.extract_response(text)
    return answers


def run_owleval(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: str | Path,
    out: str | Path,
    *,
    image_root: str | Path | None = None,
    model_id: str = "mmgpt",
    limit: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> Path:
    """Answer ``questions`` (OwlEval's questions.jsonl; images in ``cases/`` beside it unless ``image_root``) and
    write the answer file ``out``: the question objects in file order with ``answer`` and ``model_id`` added."""
    items = read_owleval(questions, image_root, limit=limit, check_images=True)
    answers = answer_owleval(
        model, tokenizer, items, max_new_tokens=max_new_tokens, batch_size=batch_size, on_progress=on_progress
    )
    return write_owleval_answers(out, answers, items, model_id=model_id)
