"""Every task of the world renders with the template and tokenises with the world's tokenizer, and its answers
agree with the ground truth (checked with the evaluation's own parsers)."""

from __future__ import annotations

import random

from mmgpt.data.templates import render_text
from mmgpt.data.tokenize import tokenize_conversation
from mmgpt.tokens import IGNORE_INDEX
from mmgpt.world.language import LANGUAGE_TASKS, language_tasks
from mmgpt.world.metrics import answer_correct, language_correct
from mmgpt.world.questions import QUESTIONS, ask, rationale_question
from mmgpt.world.scene import Scene, Shape, sample_scenes
from mmgpt.world.tasks import scene_tasks, task_conversations


def test_every_task_tokenises_without_unknown_tokens(tokenizer):
    unk = tokenizer.unk_token_id
    seen = set()
    for scene in sample_scenes(11, "train", 30):
        for task, conversations in task_conversations(scene_tasks(scene), "x.png").items():
            for conversation in conversations:
                seen.add(task)
                sample = tokenize_conversation(conversation, tokenizer)
                assert unk not in sample.input_ids, render_text(conversation)
                assert sample.num_trained > 0 and not sample.truncated
                assert len(sample.images) == 1
    for task in language_tasks(11, "train", 40):
        sample = tokenize_conversation(task.conversation(), tokenizer)
        assert unk not in sample.input_ids and sample.labels.count(IGNORE_INDEX) < len(sample.labels)
    assert seen == {"detail", "conversation", "rationale", "caption", "ocr", "one_word"}


def test_the_world_tokenizer_has_whole_words_and_no_unknowns(tokenizer):
    assert len(tokenizer) == 888  # 885 BPE tokens (the world's text saturates it) + 3 special tokens
    for word in ("circle", "purple", "diamond", "moon", "centre"):
        assert len(tokenizer.tokenize(" " + word)) == 1
    assert tokenizer.unk_token_id not in tokenizer("Zürich 😀 ### <odd>")["input_ids"]


def test_answers_agree_with_the_ground_truth():
    scenes = sample_scenes(5, "train", 60)
    for scene in scenes:
        rng = random.Random(scene.key)
        for kind in QUESTIONS:
            q = ask(kind, scene, rng)
            if q is None or kind == "exists" or (kind == "word" and scene.word is None):
                continue
            assert answer_correct(kind, q.answer, q.truth), (q, scene)
            assert answer_correct(kind, q.short, q.truth), (q, scene)
        r = rationale_question(scene, rng)
        assert answer_correct("reasoning", r.answer, r.truth)
        assert r.answer.startswith(f"The answer is {r.truth}. Because ")


def test_questions_about_a_known_scene():
    scene = Scene("s", "k", (Shape("circle", "red", "large", 0, 0), Shape("circle", "red", "small", 1, 1)), "cat")
    rng = random.Random(0)
    count = [ask("count", scene, rng) for _ in range(20)]
    assert {q.truth for q in count} == {"2"}
    assert any(q.answer == "There are two circles." for q in count)
    # Both shapes are red circles: only their positions tell them apart, so no position question exists.
    assert ask("position", scene, rng) is None
    word = ask("word", scene, rng)
    assert (word.answer, word.short) == ("The word is cat.", "cat")


def test_language_tasks_end_with_their_answer():
    tasks = language_tasks(0, "train", 400)
    assert {t.kind for t in tasks} == set(LANGUAGE_TASKS)
    for t in tasks:
        assert language_correct(t.output, t.answer), t
    sums = [t for t in tasks if "plus" in t.output]
    for t in sums:
        a, _, b, _, total = t.output.rstrip(".").split()
        assert int(a) + int(b) == int(total)
