"""Tiny dataset files in exactly the published shapes of datasets.md, written at test time.

Each writer takes a folder, writes the annotation file and the images its rows point to (except the ones a
test wants missing), and returns the annotation file's path.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.data.conftest import write_image


def dump(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
    return path


def llava(root: Path, *, missing: tuple[str, ...] = ()) -> Path:
    rows = [
        {
            "id": "000000215677",
            "image": "000000215677.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is the man doing?"},
                {"from": "gpt", "value": "He is riding a horse."},
            ],
        },
        {
            "id": "000000000002",
            "image": "000000000002.jpg",
            "conversations": [
                {"from": "human", "value": "What colour is the bus?\n<image>"},
                {"from": "gpt", "value": "Red."},
                {"from": "human", "value": "Where is it going?"},
                {"from": "gpt", "value": "To the city centre."},
                {"from": "human", "value": "Is it full?"},
                {"from": "gpt", "value": "No, it is nearly empty."},
            ],
        },
        {
            "id": "000000000003",
            "image": "000000000003.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the scene."},
                {"from": "gpt", "value": "A kitchen with a table."},
            ],
        },
    ]
    for row in rows:
        if row["image"] not in missing:
            write_image(root / "coco" / "train2017" / row["image"])
    return dump(root / "llava" / "conversation_58k.json", rows)


def minigpt4(root: Path) -> Path:
    folder = root / "cc_sbu_align"
    for image_id in ("2", "7"):
        write_image(folder / "image" / f"{image_id}.jpg")
    annotations = [
        {"image_id": "2", "caption": "The image shows a man fishing on a lake."},
        {"image_id": "7", "caption": "The image shows a snowy mountain at sunset."},
    ]
    return dump(folder / "filter_cap.json", {"annotations": annotations})


def aokvqa(root: Path) -> Path:
    write_image(root / "coco" / "train2017" / "000000299207.jpg")
    write_image(root / "coco" / "val2017" / "000000000042.jpg")
    write_image(root / "coco" / "custom" / "x.jpg")
    base = {
        "question_id": "22MexNkBPpdZGX6sxbxVBH",
        "question": "What is the man by the bags awaiting?",
        "choices": ["skateboarder", "train", "delivery", "cab"],
        "correct_choice_idx": 3,
        "direct_answers": ["ride"] * 10,
        "difficult_direct_answer": False,
        "rationales": ["He has bags.", "He is by the road."],
    }
    rows = [
        {"split": "train", "image_id": 299207, **base},
        {**base, "split": "val", "image_id": 42, "question_id": "B"},
        {**base, "split": "train", "image_id": 1, "image": "custom/x.jpg", "question_id": "C"},
    ]
    return dump(root / "aokvqa" / "aokvqa_v1p0_train.json", rows)


def coco_official(root: Path) -> Path:
    write_image(root / "coco" / "train2017" / "000000000009.jpg")
    data = {
        "info": {},
        "licenses": [],
        "images": [{"id": 9, "file_name": "000000000009.jpg", "height": 6, "width": 8}],
        "annotations": [
            {"image_id": 9, "id": 1, "caption": "A plate of food."},
            {"image_id": 9, "id": 2, "caption": "Broccoli and rice on a plate."},
        ],
    }
    return dump(root / "coco" / "annotations" / "captions_train2017.json", data)


def coco_karpathy(root: Path) -> Path:
    write_image(root / "coco" / "train2014" / "COCO_train2014_000000000009.jpg")
    write_image(root / "coco" / "val2014" / "COCO_val2014_000000000042.jpg")
    rows = [
        {"image": "train2014/COCO_train2014_000000000009.jpg", "caption": "A plate of food.", "image_id": "coco_9"},
        {
            "image": "val2014/COCO_val2014_000000000042.jpg",
            "caption": [f"Caption {k}." for k in range(5)],
            "image_id": "coco_42",
        },
    ]
    return dump(root / "coco" / "coco_karpathy_train.json", rows)


def ocr_vqa(root: Path) -> Path:
    images = root / "ocr_vqa" / "images"
    write_image(images / "000000000.jpg")
    write_image(images / "000000001.png")
    write_image(images / "000000003.gif")
    book = {
        "imageURL": "http://example.com/x.jpg",
        "questions": ["Who wrote this book?", "What is the title of this book?", "Is this a comedy book?"],
        "answers": ["Jane Doe", "A Book", "No"],
        "title": "A Book",
        "authorName": "Jane Doe",
        "genre": "Arts",
        "genreID": 0,
        "split": 1,
    }
    data = {
        "000000000": book,
        "000000001": {**book, "answers": ["Jane Doe", "A Book", 1999]},
        "000000002": book,  # image never downloaded
        "000000003": {**book, "split": 3},  # test split
    }
    return dump(root / "ocr_vqa" / "dataset.json", data)


def vqa(root: Path) -> Path:
    write_image(root / "coco" / "train2014" / "COCO_train2014_000000000458.jpg")
    questions = {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": "train2014",
        "questions": [
            {"image_id": 458, "question": "What is the table made of?", "question_id": 458000},
            {"image_id": 458, "question": "Is the food napping?", "question_id": 458001},
        ],
    }
    answers = [{"answer": "wood", "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]
    annotations = {
        "annotations": [
            {
                "question_id": 458000,
                "image_id": 458,
                "answers": answers,
                "multiple_choice_answer": "wood",
                "answer_type": "other",
            },
            {
                "question_id": 458001,
                "image_id": 458,
                "answers": answers,
                "multiple_choice_answer": "no",
                "answer_type": "yes/no",
            },
        ]
    }
    dump(root / "vqa" / "v2_mscoco_train2014_annotations.json", annotations)
    return dump(root / "vqa" / "v2_OpenEnded_mscoco_train2014_questions.json", questions)


def gqa(root: Path) -> Path:
    write_image(root / "gqa" / "images" / "2375429.jpg")
    data = {
        "07333408": {
            "imageId": "2375429",
            "question": "What is on the white wall?",
            "answer": "pipe",
            "fullAnswer": "The pipe is on the wall.",
            "isBalanced": True,
        }
    }
    return dump(root / "gqa" / "train_balanced_questions.json", data)


def dolly(root: Path) -> Path:
    rows = [
        {
            "instruction": "When did Virgin Australia start?",
            "context": "Virgin Australia began in 2000.",
            "response": "In 2000.",
            "category": "closed_qa",
        },
        {"instruction": "Name a primary colour.", "context": "", "response": "Red.", "category": "open_qa"},
    ]
    path = root / "dolly" / "databricks-dolly-15k.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def alpaca(root: Path) -> Path:
    rows = [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    ]
    return dump(root / "alpaca_gpt4" / "alpaca_gpt4_data.json", rows)


def baize(root: Path) -> Path:
    rows = [
        {
            "topic": "How do I learn Python?",
            "input": "The conversation between human and AI assistant.\n[|Human|] How do I learn Python?\n"
            "[|AI|] Start with the tutorial.\n[|Human|] And then?\n[|AI|] Build small projects.\n[|Human|] ",
        }
    ]
    return dump(root / "baize" / "quora_chat_data.json", rows)


def all_sources(root: Path) -> dict[str, list[dict]]:
    """Every format's fixture under ``root`` and the ``vision_language`` / ``language`` config entries that read
    them (one LLaVA image missing, A-OKVQA capped at 2, OCR-VQA with one missing image and one test row)."""
    llava(root, missing=("000000000003.jpg",))
    minigpt4(root)
    aokvqa(root)
    coco_official(root)
    ocr_vqa(root)
    dolly(root)
    alpaca(root)
    return {
        "vision_language": [
            {"name": "llava", "format": "llava", "path": "llava/conversation_58k.json", "images": "coco/train2017"},
            {"name": "minigpt4", "format": "minigpt4", "path": "cc_sbu_align/filter_cap.json"},
            {"name": "aokvqa", "format": "aokvqa", "path": "aokvqa/aokvqa_v1p0_train.json", "images": "coco", "cap": 2},
            {
                "name": "coco",
                "format": "coco_captions",
                "path": "coco/annotations/captions_train2017.json",
                "images": "coco/train2017",
            },
            {"name": "ocr_vqa", "format": "ocr_vqa", "path": "ocr_vqa/dataset.json", "images": "ocr_vqa/images"},
        ],
        "language": [
            {"name": "dolly", "format": "dolly", "path": "dolly/databricks-dolly-15k.jsonl"},
            {"name": "alpaca", "format": "alpaca", "path": "alpaca_gpt4/alpaca_gpt4_data.json"},
        ],
    }


def write_config(folder: Path, tokenizer_dir: Path, **overrides) -> Path:
    """A data config YAML at ``folder/data.yaml`` over every fixture in ``folder/data``."""
    import yaml

    config = {"root": "data", "tokenizer": str(tokenizer_dir), "image_size": 16, **all_sources(folder / "data")}
    config.update(overrides)
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
