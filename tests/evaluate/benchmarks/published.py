"""Tiny benchmark files written in exactly the published shapes (datasets.md, "Evaluation benchmarks").

Each ``write_*`` writes one benchmark's files under ``root`` and returns the path a reader takes. The contents are
small enough to score by hand in the tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _json(path: Path, value: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def vqa_answers(*answers: str) -> list[dict[str, Any]]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def write_vqav2(root: Path) -> Path:
    """VQAv2 val questions + annotations (three questions on two images)."""
    questions = {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": "val2014",
        "license": {},
        "questions": [
            {"image_id": 42, "question": "Is it raining?", "question_id": 420},
            {"image_id": 42, "question": "How many dogs?", "question_id": 421},
            {"image_id": 7, "question": "What is on the table?", "question_id": 70},
        ],
    }
    annotations = {
        "annotations": [
            {
                "question_id": 421,
                "image_id": 42,
                "question_type": "how many",
                "answer_type": "number",
                "multiple_choice_answer": "2",
                "answers": vqa_answers(*["2"] * 7, "two", "3", "3"),
            },
            {
                "question_id": 420,
                "image_id": 42,
                "question_type": "is it",
                "answer_type": "yes/no",
                "multiple_choice_answer": "no",
                "answers": vqa_answers(*["no"] * 10),
            },
            {
                "question_id": 70,
                "image_id": 7,
                "question_type": "what is",
                "answer_type": "other",
                "multiple_choice_answer": "laptop",
                "answers": vqa_answers(*["laptop"] * 3, *["computer"] * 7),
            },
        ]
    }
    _json(root / "v2_mscoco_val2014_annotations.json", annotations)
    return _json(root / "v2_OpenEnded_mscoco_val2014_questions.json", questions)


def write_textvqa(root: Path) -> Path:
    data = [
        {
            "question": "what brand is this?",
            "image_id": "003a8ae2ef43b901",
            "image_classes": ["Bottle"],
            "flickr_original_url": "https://x",
            "flickr_300k_url": "https://y",
            "image_width": 1024,
            "image_height": 664,
            "answers": ["nokia"] * 6 + ["NOKIA"] * 2 + ["nokia phone"] * 2,
            "question_tokens": ["what", "brand", "is", "this"],
            "question_id": 34602,
            "set_name": "val",
        },
    ]
    return _json(root / "TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa", "data": data})


def write_vizwiz(root: Path) -> Path:
    rows = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "Ok. There is another picture I hope it is a better one.",
            "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 10,
            "answer_type": "unanswerable",
            "answerable": 0,
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "Which one is the blue one?",
            "answers": [{"answer": "right", "answer_confidence": "yes"}] * 2
            + [{"answer": "left", "answer_confidence": "maybe"}] * 8,
            "answer_type": "other",
            "answerable": 1,
        },
    ]
    return _json(root / "val.json", rows)


def write_gqa(root: Path) -> Path:
    questions = {
        "20968379": {
            "semantic": [],
            "entailed": [],
            "equivalent": ["20968379"],
            "question": "Who wears the hat?",
            "imageId": "n288870",
            "isBalanced": True,
            "groups": {"global": None, "local": "13-man"},
            "answer": "man",
            "semanticStr": "...",
            "annotations": {},
            "types": {"detailed": "relS", "semantic": "rel", "structural": "query"},
            "fullAnswer": "The man wears a hat.",
        },
        "20968380": {
            "question": "Is the sky blue?",
            "imageId": "n288871",
            "answer": "yes",
            "fullAnswer": "Yes.",
            "types": {"detailed": "verifyAttr", "semantic": "attr", "structural": "verify"},
        },
    }
    return _json(root / "testdev_balanced_questions.json", questions)


def write_ocrvqa(root: Path) -> Path:
    data = {
        "000000001": {
            "imageURL": "http://x/1.jpg",
            "questions": ["Who wrote this book?", "What is the title?"],
            "answers": ["Jane Doe", "A Book"],
            "title": "A Book",
            "authorName": "Jane Doe",
            "genre": "Fiction",
            "genreID": 1,
            "split": 3,
        },
        "000000002": {
            "imageURL": "http://x/2.jpg",
            "questions": ["Is this a comic?"],
            "answers": ["No"],
            "title": "T",
            "authorName": "A",
            "genre": "G",
            "genreID": 2,
            "split": 1,
        },
        "000000003": {
            "imageURL": "http://x/3.jpg",
            "questions": ["What year?"],
            "answers": [1999],
            "title": "T",
            "authorName": "A",
            "genre": "G",
            "genreID": 2,
            "split": 3,
        },
    }
    return _json(root / "dataset.json", data)


def write_aokvqa(root: Path) -> Path:
    rows = [
        {
            "split": "val",
            "image_id": 461751,
            "question_id": "22jbM6gDxdaMaunuzgrsBB",
            "question": "What is in the motorcyclist's mouth?",
            "choices": ["toothpick", "food", "popsicle stick", "cigarette"],
            "correct_choice_idx": 3,
            "direct_answers": ["cigarette"] * 8 + ["cigar"] * 2,
            "difficult_direct_answer": False,
            "rationales": ["He's smoking while riding."],
        },
        {
            "split": "val",
            "image_id": 7,
            "question_id": "2hard",
            "question": "Why?",
            "choices": ["a", "b"],
            "correct_choice_idx": 0,
            "direct_answers": ["a"] * 10,
            "difficult_direct_answer": True,
            "rationales": ["Because."],
        },
    ]
    return _json(root / "aokvqa_v1p0_val.json", rows)


def write_pope(root: Path) -> Path:
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    objects = ["snowboard", "person", "dog", "car", "cat", "bus"]
    rows = [
        {
            "question_id": i + 1,
            "image": "COCO_val2014_000000310196.jpg",
            "text": f"Is there a {o} in the image?",
            "label": label,
        }
        for i, (o, label) in enumerate(zip(objects, labels, strict=True))
    ]
    return _jsonl(root / "coco_pope_random.json", rows)


def write_karpathy(root: Path, name: str = "dataset_coco.json") -> Path:
    coco = name == "dataset_coco.json"

    def image(k: int, split: str, sentences: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {
            "filename": f"COCO_val2014_{k:012d}.jpg" if coco else f"{1000092795 + k}.jpg",
            "imgid": k,
            "split": split,
            "sentids": list(range(len(sentences))),
            "sentences": [
                {"tokens": s.lower().split(), "raw": s, "imgid": k, "sentid": j} for j, s in enumerate(sentences)
            ],
        }
        if coco:
            row.update(filepath="val2014", cocoid=k)
        return row

    images = [
        image(1, "train", ["A train."]),
        image(2, "test", ["A man riding a horse on a beach.", "A person rides a brown horse."]),
        image(3, "test", ["Two dogs play in the snow.", "Dogs running through snow."]),
        image(4, "val", ["A cat."]),
    ]
    return _json(root / name, {"images": images, "dataset": "coco" if coco else "flickr30k"})


def write_coco_official(root: Path) -> Path:
    document = {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": 1, "width": 1},
            {"id": 5, "file_name": "COCO_val2014_000000000005.jpg", "height": 1, "width": 1},
            {"id": 8, "file_name": "COCO_val2014_000000000008.jpg", "height": 1, "width": 1},
        ],
        "annotations": [
            {"image_id": 5, "id": 1, "caption": "A bowl of fruit."},
            {"image_id": 9, "id": 2, "caption": "A plate of food."},
            {"image_id": 5, "id": 3, "caption": "Fruit in a bowl."},
        ],
    }
    return _json(root / "captions_val2014.json", document)


def write_hateful_memes(root: Path) -> Path:
    rows = [
        {"id": 8291, "img": "img/08291.png", "label": 1, "text": "white people is this a shooting range"},
        {"id": 46971, "img": "img/46971.png", "label": 0, "text": "bravery at its finest"},
        {"id": 3745, "img": "img/03745.png", "label": 1, "text": "your order comes to $37.50"},
        {"id": 83745, "img": "img/83745.png", "label": 0, "text": ""},
    ]
    return _jsonl(root / "dev.jsonl", rows)


def write_mmlu(root: Path) -> Path:
    """``data/test/{subject}_test.csv`` (no header) and ``data/dev`` for two subjects; returns ``data``."""
    test = root / "data" / "test"
    test.mkdir(parents=True)
    (test / "abstract_algebra_test.csv").write_text(
        'Find the degree of Q(sqrt(2)) over Q.,0,4,2,6,C\n"Is 1, 2, or 3 prime?",1,2,3,none,B\nSelect one.,a,b,c,d,A\n',
        encoding="utf-8",
    )
    (test / "anatomy_test.csv").write_text("Which bone?,femur,ulna,tibia,skull,D\n", encoding="utf-8")
    (root / "data" / "dev").mkdir()
    (root / "data" / "dev" / "anatomy_dev.csv").write_text("Dev question?,w,x,y,z,A\n", encoding="utf-8")
    return root / "data"


def write_owleval(root: Path) -> Path:
    rows = [
        {
            "image": "1.jpg",
            "question_id": 1,
            "question": "What is funny?",
            "ability": "a,b,e",
            "category": ["single_turn"],
        },
        {
            "image": "4.jpg",
            "question_id": 4,
            "question": "Is there text?",
            "ability": "a,c",
            "category": ["single_turn", "multi_turn"],
        },
        {
            "image": "2.jpg",
            "question_id": 2,
            "question": "Why funny?",
            "ability": "a,b,e",
            "category": ["]single_turn"],
        },
        {
            "image": "4.jpg",
            "question_id": 5,
            "question": "What is funny about it?",
            "ability": "a,b,c,e,f",
            "category": ["multi_turn"],
        },
    ]
    return _jsonl(root / "OwlEval" / "questions.jsonl", rows)


def write_llava_bench(root: Path) -> Path:
    rows = [
        {"image": "001.jpg", "text": "What is the name of this famous sight?", "category": "conv", "question_id": 0},
        {"image": "001.jpg", "text": "Describe this photo in detail.", "category": "detail", "question_id": 1},
    ]
    return _jsonl(root / "llava-bench-in-the-wild" / "questions.jsonl", rows)


def write_mmvet(root: Path) -> Path:
    data = {
        "v1_0": {
            "imagename": "v1_0.png",
            "capability": ["ocr", "math"],
            "question": "What is x in the equation?",
            "answer": "-1 <AND> -5",
        },
        "v1_1": {"imagename": "v1_1.png", "capability": ["rec"], "question": "What is this?", "answer": "a dog"},
    }
    return _json(root / "mm-vet" / "mm-vet.json", data)


def write_dolly(root: Path) -> Path:
    rows = [
        {
            "instruction": "When did Virgin Australia start operating?",
            "context": "Virgin Australia commenced services on 31 August 2000.",
            "response": "On 31 August 2000.",
            "category": "closed_qa",
        },
        {"instruction": "Name a primary colour.", "context": "", "response": "Red.", "category": "open_qa"},
    ]
    return _jsonl(root / "databricks-dolly-15k.jsonl", rows)


def write_alpaca(root: Path) -> Path:
    rows = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, exercise."},
        {"instruction": "Translate to French.", "input": "Hello", "output": "Bonjour"},
    ]
    return _json(root / "alpaca_gpt4_data.json", rows)
