"""Prompt formats: OpenFlamingo's fewshot text (golden strings from ``open_flamingo/eval/models/open_flamingo.py``'s
``get_vqa_prompt`` / ``get_caption_prompt`` / ``get_hateful_memes_prompt`` and ``evaluate.py``'s joining), the
original MMLU format, the model's chat style with examples as earlier turns, and the token ids each becomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmgpt.evaluate.benchmarks.items import ClassificationItem, MmluItem, VqaItem, YesNoItem
from mmgpt.evaluate.prompts import SHORT_ANSWER, PromptSpec
from mmgpt.evaluate.queries import QueryBuilder
from mmgpt.tokens import IMAGE_POSITION
from tests.toy_prefix import PER_IMAGE, make_tokenizer, make_toy

DEMOS = [
    VqaItem(1, Path("a.jpg"), "What colour is the car?", ("red",) * 10),
    VqaItem(2, Path("b.jpg"), "How many dogs?", ("2",) * 10),
]
QUESTION = VqaItem(9, Path("q.jpg"), "Is it raining?", ("no",) * 10)


def builder(model, spec: PromptSpec, benchmark: str = "vqav2", kind: str = "vqa") -> QueryBuilder:
    return QueryBuilder(*model, spec, benchmark=benchmark, kind=kind)


def test_openflamingo_vqa_prompt(tiny_world):
    query = builder(tiny_world, PromptSpec()).build(QUESTION, DEMOS)
    assert query.text == (
        "<image>Question:What colour is the car? Short answer:red<|endofchunk|>\n"
        "<image>Question:How many dogs? Short answer:2<|endofchunk|>\n"
        "<image>Question:Is it raining? Short answer:"
    )
    assert query.images == (Path("a.jpg"), Path("b.jpg"), Path("q.jpg")) and query.demos == (1, 2)


def test_zero_shot_examples_keep_their_text_and_lose_their_images(tiny_world):
    query = builder(tiny_world, PromptSpec()).build(QUESTION, DEMOS, text_only_demos=True)
    assert query.text == (
        "Question:What colour is the car? Short answer:red<|endofchunk|>\n"
        "Question:How many dogs? Short answer:2<|endofchunk|>\n"
        "<image>Question:Is it raining? Short answer:"
    )
    assert query.images == (Path("q.jpg"),)


def test_caption_and_hateful_memes_prompts(tiny_world):
    from mmgpt.evaluate.benchmarks.items import CaptionItem

    caption = builder(tiny_world, PromptSpec(), "coco", "caption")
    demo = CaptionItem(1, Path("a.jpg"), ("A dog on a beach.", "A dog."))
    assert caption.build(CaptionItem(2, Path("b.jpg"), ("x",)), [demo]).text == (
        "<image>Output:A dog on a beach.<|endofchunk|>\n<image>Output:"
    )
    memes = builder(tiny_world, PromptSpec(), "hatefulmemes", "classification")
    classes = ("not hateful", "hateful")
    shown = ClassificationItem(1, Path("a.png"), 1, classes, "look at you")
    query = memes.build(ClassificationItem(2, Path("b.png"), 0, classes, "nice day"), [shown])
    assert query.text == (
        "<image>is an image with: 'look at you' written on it. Is it hateful? Answer:yes<|endofchunk|>\n"
        "<image>is an image with: 'nice day' written on it. Is it hateful? Answer:"
    )
    assert query.candidates == ("no", "yes")  # OpenFlamingo's HM_CLASSNAMES, right after "Answer:"


def test_mmlu_prompt_is_the_original_format(tiny_world):
    dev = MmluItem("anatomy/0", "anatomy", "Dev question?", ("w", "x", "y", "z"), 0)
    test = MmluItem("anatomy/1", "anatomy", "Which bone?", ("femur", "ulna", "tibia", "skull"), 3)
    query = builder(tiny_world, PromptSpec(), "mmlu", "mmlu").build(test, [dev])
    assert query.text == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "Dev question?\nA. w\nB. x\nC. y\nD. z\nAnswer: A\n\n"
        "Which bone?\nA. femur\nB. ulna\nC. tibia\nD. skull\nAnswer:"
    )
    assert query.candidates == (" A", " B", " C", " D") and query.images == ()


def test_fewshot_ids_are_the_tokenizer_on_the_text(tiny_world):
    """For a Flamingo, whose tokenizer has <image> and <|endofchunk|>, piecewise encoding equals encoding the text."""
    model, tokenizer = tiny_world
    query = builder(tiny_world, PromptSpec()).build(QUESTION, DEMOS)
    assert query.ids == tokenizer(query.text)["input_ids"]
    assert query.ids.count(model.special.image) == 3 and query.ids.count(model.special.end_of_chunk) == 2


def test_a_template_with_a_space_before_the_answer(tiny_world):
    spec = PromptSpec(template="<image>Question: {question} Answer: {answer}")
    item = YesNoItem(3, Path("q.jpg"), "Is there a cat?", "no")
    query = builder(tiny_world, spec, "pope", "yes_no").build(item, [YesNoItem(4, Path("a.jpg"), "A dog?", "yes")])
    assert query.text == "<image>Question: A dog? Answer: yes<|endofchunk|>\n<image>Question: Is there a cat? Answer:"
    mc = QueryBuilder(*tiny_world, spec, benchmark="hatefulmemes", kind="classification")
    meme = ClassificationItem(1, Path("a.png"), 0, ("not hateful", "hateful"), "hi")
    assert mc.build(meme).candidates == (" no", " yes")  # the space the template puts before its answer


def test_chat_prompt_is_the_model_style_with_examples_as_turns(tiny_world):
    query = builder(tiny_world, PromptSpec("chat")).build(QUESTION, DEMOS[:1])
    header = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    assert query.text == (
        f"{header}\n\n### Image:\n<image>\n\n### Instruction:\nWhat colour is the car?\n{SHORT_ANSWER}\n\n"
        "### Response:\nred\n\n### Image:\n<image>\n\n### Instruction:\nIs it raining?\n"
        f"{SHORT_ANSWER}\n\n### Response:\n"
    )
    plain = builder(tiny_world, PromptSpec("chat", suffix="")).build(QUESTION)
    assert plain.text.endswith("### Instruction:\nIs it raining?\n\n### Response:\n")


def test_prefix_models_get_their_image_positions_and_no_chunk_token():
    tokenizer = make_tokenizer()
    model = make_toy(tokenizer)
    query = QueryBuilder(model, tokenizer, PromptSpec(), benchmark="vqav2", kind="vqa").build(QUESTION, DEMOS[:1])
    assert "<|endofchunk|>" not in query.text and query.text.count("<image>") == 2
    assert query.ids.count(IMAGE_POSITION) == 2 * PER_IMAGE


def test_prompt_spec_errors():
    with pytest.raises(ValueError, match="prompt format 'plain' is not one of fewshot, chat"):
        PromptSpec("plain")
    with pytest.raises(ValueError, match=r"needs an \{answer\} field"):
        PromptSpec(template="<image>Question:{question}")
