"""The written world: the same arguments give the same bytes, and the real sources and loader read it."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from mmgpt.data.config import load_data_config
from mmgpt.data.loader import build_training_batches
from mmgpt.data.sources import read_source
from mmgpt.data.tokenize import load_tokenizer
from mmgpt.tokens import END_OF_CHUNK, IMAGE
from mmgpt.world.corpus import DIALOGUE_FORMS, DIALOGUE_LEADS, PLAIN_QA, DialogueForm
from mmgpt.world.describe import grid_caption, index_caption, tally_caption, where_caption
from mmgpt.world.language import language_tasks
from mmgpt.world.scene import Scene, sample_scenes
from mmgpt.world.tasks import scene_tasks, task_conversations
from mmgpt.world.write import generate_world, load_heldout, world_data_config

from .conftest import SMALL


def digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path, world, tokenizer):
    generate_world(tmp_path / "again", SMALL, tokenizer=tokenizer)
    assert digest(tmp_path / "again") == digest(world)


def test_every_source_reads_the_files_back(world):
    for name in ("data.yaml", "data-one-word.yaml"):
        cfg = load_data_config(world / name)
        counts = {s.name: len(list(read_source(s, resolve=cfg.resolve))) for s in cfg.sources}
        assert all(counts.values()), counts
    scenes = json.loads((world / "world.json").read_text())["counts"]
    assert counts["world_detail"] == counts["world_conversation"] == scenes["scenes"] == 12
    assert counts["world_coco"] == scenes["caption"] == 24
    assert counts["world_vqa"] == scenes["one_word"] == 36
    assert counts["world_ocr_vqa"] == scenes["ocr"]
    assert counts["world_dolly"] + counts["world_alpaca"] == 40


def test_files_hold_the_in_memory_conversations(world):
    cfg = load_data_config(world / "data.yaml")
    sources = {s.name: s for s in cfg.sources}
    read = list(read_source(sources["world_conversation"], resolve=cfg.resolve))
    heldout = load_heldout(world)
    scenes = sample_scenes(SMALL.seed, "train", SMALL.scenes)
    for scene, conversation in zip(scenes, read, strict=True):
        expected = task_conversations(scene_tasks(scene), world / "images" / f"{scene.id}.png")["conversation"][0]
        assert [(m.role, m.text, [str(i) for i in m.images]) for m in conversation.messages] == [
            (m.role, m.text, [str(i) for i in m.images]) for m in expected.messages
        ]
    assert len(heldout.scenes) == 4 and all(isinstance(s, Scene) for s in heldout.scenes)
    assert all(p.is_file() for p in heldout.images) and heldout.image_size == 96
    assert len(heldout.language) == 8


def test_build_training_batches_yields_paired_batches(world):
    cfg = load_data_config(world / "data-one-word.yaml")
    batches = build_training_batches(cfg, load_tokenizer(cfg.tokenizer))
    step = next(iter(batches))
    vl, lo = step.vision_language, step.language
    assert vl.media.shape[0] == 8 and tuple(vl.media.shape[-3:]) == (3, 96, 96)
    assert lo is not None and lo.media is None and len(lo) == 8
    assert torch.equal(vl.image_counts, torch.ones(8, dtype=vl.image_counts.dtype))


def test_language_free_config_for_the_ablation(world):
    cfg = world_data_config(world, language=False)
    assert cfg.language == [] and cfg.language_ratio == 0.0 and cfg.root == str(world.resolve())


def test_pretraining_corpus_binds_one_image_token_per_image(world):
    names = ("captions", "grid", "index", "where", "tally", "interleaved", "text", "questions", "qa", "dialogues")
    for name in (*names, "text-dialogues"):
        rows = [json.loads(line) for line in (world / "pretrain" / f"{name}.jsonl").read_text().splitlines()]
        assert rows
        for row in rows:
            assert row["text"].count(IMAGE) == len(row["images"]) == row["text"].count(END_OF_CHUNK)
            assert all((world / path).is_file() for path in row["images"])


def test_pretraining_questions_are_plain_text_about_one_image(world):
    rows = [json.loads(line) for line in (world / "pretrain" / "questions.jsonl").read_text().splitlines()]
    scenes = sample_scenes(SMALL.seed, "train", SMALL.scenes)
    assert [row["images"] for row in rows] == [[f"images/{scene.id}.png"] for scene in scenes]
    for row in rows:
        text = row["text"]
        assert text.startswith(IMAGE + "Question: ") and text.endswith(END_OF_CHUNK) and "###" not in text
        assert text.count("Question: ") == text.count(" Answer: ") == 3


@pytest.mark.parametrize(
    ("name", "caption"),
    [("grid", grid_caption), ("index", index_caption), ("where", where_caption), ("tally", tally_caption)],
)
def test_caption_rows_describe_one_image_each(world, name, caption):
    rows = [json.loads(line) for line in (world / "pretrain" / f"{name}.jsonl").read_text().splitlines()]
    scenes = sample_scenes(SMALL.seed, "train", SMALL.scenes)
    assert rows == [
        {"images": [f"images/{scene.id}.png"], "text": IMAGE + caption(scene) + END_OF_CHUNK} for scene in scenes
    ]


def test_language_qa_rows_ask_each_task_then_answer_it(world):
    tasks = language_tasks(SMALL.seed, "train", SMALL.language)
    rows = [json.loads(line)["text"] for line in (world / "pretrain" / "qa.jsonl").read_text().splitlines()]
    assert len(rows) == len(tasks) // 4
    first = tasks[:4]
    expected = " ".join(
        f"Question: {t.instruction}{' ' + t.input if t.input else ''} Answer: {t.output}" for t in first
    )
    assert rows[0] == expected


def test_a_dialogue_form_sets_out_questions_and_answers():
    form = DialogueForm("Q: ", "\nA: ", "\n")
    assert form.render([("Why?", "Because."), ("How many?", "Two.")]) == "Q: Why?\nA: Because.\nQ: How many?\nA: Two."
    assert form.prompt("Why?") == "Q: Why?\nA:" and form.next_question == "\nQ:"
    assert PLAIN_QA.prompt("Why?") == "Question: Why? Answer:" and PLAIN_QA.next_question == " Question:"


def test_dialogue_rows_ask_about_one_image_in_several_layouts(world):
    rows = [json.loads(line) for line in (world / "pretrain" / "dialogues.jsonl").read_text().splitlines()]
    scenes = sample_scenes(SMALL.seed, "train", SMALL.scenes)
    assert [row["images"] for row in rows] == [[f"images/{scene.id}.png"] for scene in scenes]
    used, leads = set(), 0
    for row in rows:
        lead, body = row["text"].split(IMAGE)
        assert lead in ("", *DIALOGUE_LEADS) and body.endswith(END_OF_CHUNK) and "###" not in body
        leads += bool(lead)
        [form] = [f for f in DIALOGUE_FORMS if body.startswith(f.question) and f.answer in body]
        assert 2 <= body.count(form.answer) <= 4
        used.add(form)
    assert len(used) >= 3 and 0 < leads < len(rows)


def test_text_dialogue_rows_hold_the_language_tasks(world):
    tasks = language_tasks(SMALL.seed, "train", SMALL.language)
    rows = [json.loads(line) for line in (world / "pretrain" / "text-dialogues.jsonl").read_text().splitlines()]
    assert len(rows) == len(tasks) // 4 and all(row["images"] == [] for row in rows)
    for row, start in zip(rows, range(0, len(tasks), 4), strict=True):
        [form] = [f for f in DIALOGUE_FORMS if row["text"].startswith(f.question)]
        pairs = [(" ".join(filter(None, (t.instruction, t.input))), t.output) for t in tasks[start : start + 4]]
        assert row["text"] == form.render(pairs)
