"""The world's tasks as rows of the published dataset formats (datasets.md), exactly as ``data/sources/*`` read them.

Images are named ``{scene.id}.png`` under one image folder that every source's ``images:`` points at, except VQA
v2, whose layout fixes ``{subtype}/COCO_{subtype}_{image_id:012d}.jpg``: those are JPEG copies (quality 95, no
chroma subsampling; flat colours survive almost unchanged).
"""

from __future__ import annotations

from typing import Any

from mmgpt.tokens import IMAGE
from mmgpt.world.language import LanguageTask
from mmgpt.world.tasks import SceneTasks

VQA_SUBTYPE = "train2014"
VQA_QUESTIONS_FILE = f"v2_OpenEnded_mscoco_{VQA_SUBTYPE}_questions.json"
VQA_ANNOTATIONS_FILE = f"v2_mscoco_{VQA_SUBTYPE}_annotations.json"
# Which language-only file holds which kind (both formats are read, as the paper reads Dolly and Alpaca).
ALPACA_KINDS = ("arithmetic", "ordering")
DOLLY_CATEGORIES = {"spelling": "general_qa", "facts": "open_qa"}


def image_name(tasks: SceneTasks) -> str:
    return f"{tasks.scene.id}.png"


def vqa_image_path(image_id: int) -> str:
    return f"{VQA_SUBTYPE}/COCO_{VQA_SUBTYPE}_{image_id:012d}.jpg"


def _human(text: str, index: int) -> str:
    # LLaVA puts the marker before or after the question; both are written, as the real files have both.
    return f"{IMAGE}\n{text}" if index % 2 == 0 else f"{text}\n{IMAGE}"


def llava_detail_row(tasks: SceneTasks, index: int) -> dict[str, Any]:
    instruction, description = tasks.detail
    return {
        "id": tasks.scene.id,
        "image": image_name(tasks),
        "conversations": [
            {"from": "human", "value": _human(instruction, index)},
            {"from": "gpt", "value": description},
        ],
    }


def llava_conversation_row(tasks: SceneTasks, index: int) -> dict[str, Any]:
    turns = []
    for k, q in enumerate(tasks.conversation):
        turns.append({"from": "human", "value": _human(q.text, index) if k == 0 else q.text})
        turns.append({"from": "gpt", "value": q.answer})
    return {"id": tasks.scene.id, "image": image_name(tasks), "conversations": turns}


def aokvqa_row(tasks: SceneTasks, index: int) -> dict[str, Any]:
    q = tasks.rationale
    return {
        "split": "train",
        "image_id": index,
        "question_id": f"world{tasks.scene.id}",
        "question": q.question,
        "choices": q.choices,
        "correct_choice_idx": q.correct,
        "direct_answers": [q.truth] * 10,
        "difficult_direct_answer": False,
        "rationales": q.rationales,
        "image": image_name(tasks),  # the field some redistributions add; the source prefers it
    }


def coco_captions(all_tasks: list[SceneTasks], size: int) -> dict[str, Any]:
    """The official ``captions_train2017.json`` layout."""
    images = [{"id": i, "file_name": image_name(t), "width": size, "height": size} for i, t in enumerate(all_tasks)]
    annotations = [
        {"image_id": i, "id": i * 10 + k, "caption": caption}
        for i, t in enumerate(all_tasks)
        for k, caption in enumerate(t.captions)
    ]
    info = {"description": "mmgpt generated world, COCO captions layout"}
    return {"info": info, "images": images, "annotations": annotations}


def ocr_vqa(all_tasks: list[SceneTasks]) -> dict[str, Any]:
    """OCR-VQA's ``dataset.json``: keyed by image id (the image file's stem); split 1 is train."""
    return {
        t.scene.id: {
            "imageURL": "",
            "questions": [q for q, _ in t.ocr],
            "answers": [a for _, a in t.ocr],
            "title": t.scene.word,
            "authorName": "",
            "genre": "world",
            "genreID": 0,
            "split": 1,
        }
        for t in all_tasks
        if t.ocr
    }


def vqa_files(all_tasks: list[SceneTasks]) -> tuple[dict[str, Any], dict[str, Any]]:
    """VQA v2's questions and annotations files; image ``i`` is scene ``i``."""
    questions, annotations = [], []
    for i, t in enumerate(all_tasks):
        for k, q in enumerate(t.one_word):
            question_id = i * 10 + k
            questions.append({"image_id": i, "question": q.text, "question_id": question_id})
            answers = [{"answer": q.short, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
            answer_type = "yes/no" if q.short in ("yes", "no") else "number" if q.short.isdigit() else "other"
            annotations.append(
                {
                    "question_id": question_id,
                    "image_id": i,
                    "question_type": q.kind,
                    "answer_type": answer_type,
                    "multiple_choice_answer": q.short,
                    "answers": answers,
                }
            )
    header = {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": VQA_SUBTYPE}
    return {**header, "questions": questions}, {**header, "annotations": annotations}


def alpaca_rows(tasks: list[LanguageTask]) -> list[dict[str, str]]:
    return [{"instruction": t.instruction, "input": t.input, "output": t.output} for t in tasks]


def dolly_rows(tasks: list[LanguageTask]) -> list[dict[str, str]]:
    return [
        {"instruction": t.instruction, "context": t.input, "response": t.output, "category": DOLLY_CATEGORIES[t.kind]}
        for t in tasks
    ]
