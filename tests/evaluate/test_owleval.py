"""The OwlEval runner: questions in the published format (rows of mPLUG-Owl's ``OwlEval/questions.jsonl``, images
in ``cases/``) answered by the tiny mPLUG-Owl loaded from its release layout and by the tiny Flamingo (the embedded
tiny-world): one answer file per model in the layout of ``OwlEval/answer/*.jsonl``; multi-turn questions of one
image answered in one conversation, in order - each answer equal to a chat session asking the same questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mmgpt
from mmgpt.chat import ChatModel, ChatSession
from mmgpt.data.styles import get_style
from mmgpt.evaluate.owleval import run_owleval
from mmgpt.generate import GenerationConfig
from tests.model.mplug_owl_tiny import write_tiny_release
from tests.toy_prefix import picture

# Verbatim rows of OwlEval/questions.jsonl: single-turn questions and the multi-turn conversations of 4.jpg and 5.jpg.
QUESTIONS = [
    {"image": "3.jpg", "question_id": 3, "question": "What is unusual about this image?", "ability": "a,b,e",
     "category": ["single_turn"]},
    {"image": "4.jpg", "question_id": 4, "question": "Is there text in the image? If so, can you read it and explain "
     "it to me?", "ability": "a,c", "category": ["single_turn", "multi_turn"]},
    {"image": "4.jpg", "question_id": 5, "question": "What is funny about it?", "ability": "a,b,c,e,f",
     "category": ["multi_turn"]},
    {"image": "5.jpg", "question_id": 6, "question": "Where is the frisbee in the image?", "ability": "a,b",
     "category": ["single_turn", "multi_turn"]},
    {"image": "5.jpg", "question_id": 7, "question": "Where is the man in the image?", "ability": "a,b",
     "category": ["multi_turn"]},
    {"image": "5.jpg", "question_id": 8, "question": "What is the spatial relation between the frisbee and the man?",
     "ability": "a,b,e,f", "category": ["multi_turn"]},
]  # fmt: skip
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def owleval(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("OwlEval")
    (root / "cases").mkdir()
    for seed, name in enumerate(("3.jpg", "4.jpg", "5.jpg"), start=1):
        picture(seed, size=48).save(root / "cases" / name)
    (root / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS))
    return root / "questions.jsonl"


def load_model(name: str, tmp_path: Path):
    if name == "tiny-world":
        return mmgpt.load("tiny-world")
    return mmgpt.load(write_tiny_release(tmp_path / "mplug-owl-tiny"), dtype="float32")


def asked_in_one_chat(model, tokenizer, questions: list[str], image: Path) -> list[str]:
    style = get_style(model.prompt_format.style)
    config = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, stop_strings=style.stop_strings)
    session = ChatSession(ChatModel.wrap(model, tokenizer))
    answers = []
    for k, question in enumerate(questions):
        answers.append(session.ask(question, images=[image] if k == 0 else [], config=config).text)
    return answers


@pytest.mark.parametrize("name", ["mplug-owl-tiny", "tiny-world"])
def test_one_answer_file_per_model_with_conversations_asked_in_order(owleval, tmp_path, name):
    model, tokenizer = load_model(name, tmp_path)
    out = run_owleval(
        model, tokenizer, owleval, tmp_path / f"{name}_answer.jsonl", model_id=name, max_new_tokens=MAX_NEW_TOKENS,
        batch_size=2,
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["question_id"] for row in rows] == [q["question_id"] for q in QUESTIONS]  # file order
    for row, question in zip(rows, QUESTIONS, strict=True):
        assert {k: row[k] for k in question} == question and row["model_id"] == name
        assert isinstance(row["answer"], str)
    answers = {row["question_id"]: row["answer"] for row in rows}
    cases = owleval.parent / "cases"
    for image, ids in [("3.jpg", [3]), ("4.jpg", [4, 5]), ("5.jpg", [6, 7, 8])]:
        questions = [q["question"] for q in QUESTIONS if q["question_id"] in ids]
        assert [answers[i] for i in ids] == asked_in_one_chat(model, tokenizer, questions, cases / image)
