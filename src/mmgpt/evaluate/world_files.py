"""A generated world's held-out scenes as benchmark files in the published layouts, so ``mmgpt eval`` runs every
benchmark path on data a tiny model knows (and tests run end to end without downloads).

Written under ``OUT`` (images are the world's own, referred to, not copied, except VQAv2's fixed layout)::

    vqav2/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json, val2014/*.jpg
    coco/dataset_coco.json            Karpathy layout: held-out scenes split "test", training scenes "train"
    aokvqa/aokvqa_v1p0_val.json       the reasoning question of each held-out scene (its choices, its answer)
    pope/coco_pope_world.json         per scene: "Is there a {shape} in the image?" for a shape it has and one it lacks
    language/dolly_heldout.jsonl      the held-out language tasks in Dolly's layout

Support sets (training splits) for in-context examples are the world's training files: ``vqa/`` (VQAv2 layout,
train2014), ``aokvqa/aokvqa_world_train.json`` and the Karpathy file's train split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmgpt.evaluate.benchmarks.common import write_json, write_jsonl
from mmgpt.world.describe import captions
from mmgpt.world.formats import aokvqa_row, vqa_files
from mmgpt.world.render import save_scene
from mmgpt.world.scene import SHAPES, sample_scenes
from mmgpt.world.tasks import scene_tasks
from mmgpt.world.write import IMAGES, MANIFEST, load_heldout

SUBTYPE = "val2014"
VQA_QUESTIONS = f"v2_OpenEnded_mscoco_{SUBTYPE}_questions.json"
VQA_ANNOTATIONS = f"v2_mscoco_{SUBTYPE}_annotations.json"
FILES = {
    "vqav2": f"vqav2/{VQA_QUESTIONS}",
    "coco": "coco/dataset_coco.json",
    "aokvqa": "aokvqa/aokvqa_v1p0_val.json",
    "pope": "pope/coco_pope_world.json",
    "dolly": "language/dolly_heldout.jsonl",
}


def _pope_rows(scenes: list, images: list[str]) -> list[dict[str, Any]]:
    rows = []
    for scene, image in zip(scenes, images, strict=True):
        present = sorted({shape.kind for shape in scene.shapes})
        absent = [kind for kind in SHAPES if kind not in present]
        probes = [(present[0], "yes")] + ([(absent[0], "no")] if absent else [])
        for kind, label in probes:
            rows.append(
                {
                    "question_id": len(rows) + 1,
                    "image": image,
                    "text": f"Is there a {kind} in the image?",
                    "label": label,
                }
            )
    return rows


def write_world_benchmarks(world: str | Path, out: str | Path, *, limit: int | None = None) -> dict[str, Path]:
    """Write the held-out scenes (the first ``limit``) of ``world`` as benchmark files under ``out``; returns
    ``{benchmark: file}`` (the file ``mmgpt eval BENCHMARK --data`` takes; image roots: see the module)."""
    world, out = Path(world).resolve(), Path(out)
    heldout = load_heldout(world)
    scenes, images = heldout.scenes[:limit], heldout.images[:limit]
    relative = [str(Path(i).resolve().relative_to(world)) for i in images]
    tasks = [scene_tasks(scene) for scene in scenes]

    questions, annotations = vqa_files(tasks)
    for document in (questions, annotations):
        document["data_subtype"] = SUBTYPE
    for i, scene in enumerate(scenes):
        save_scene(
            scene, out / "vqav2" / SUBTYPE / f"COCO_{SUBTYPE}_{i:012d}.jpg", size=heldout.image_size, format="JPEG"
        )
    write_json(out / "vqav2" / VQA_QUESTIONS, questions)
    write_json(out / "vqav2" / VQA_ANNOTATIONS, annotations)

    manifest = json.loads((world / MANIFEST).read_text(encoding="utf-8"))
    config = manifest["config"]
    training = sample_scenes(config["seed"], "train", config["scenes"])
    karpathy = [
        {"filepath": IMAGES, "filename": f"{s.id}.png", "imgid": k, "split": "train",
         "sentences": _sentences(captions(s))}
        for k, s in enumerate(training)
    ]  # fmt: skip
    karpathy += [
        {"filepath": str(Path(r).parent), "filename": Path(r).name, "imgid": len(training) + k, "split": "test",
         "sentences": _sentences(t.captions)}
        for k, (t, r) in enumerate(zip(tasks, relative, strict=True))
    ]  # fmt: skip
    write_json(out / FILES["coco"], {"images": karpathy, "dataset": "coco"})

    aokvqa = [
        {**aokvqa_row(t, k), "split": "val", "question_id": f"heldout{t.scene.id}", "image": r}
        for k, (t, r) in enumerate(zip(tasks, relative, strict=True))
    ]
    write_json(out / FILES["aokvqa"], aokvqa)
    write_jsonl(out / FILES["pope"], _pope_rows(scenes, relative))
    write_jsonl(
        out / FILES["dolly"],
        (
            {"instruction": t.instruction, "context": t.input, "response": t.output, "category": t.kind}
            for t in heldout.language[:limit]
        ),
    )
    return {name: out / file for name, file in FILES.items()}


def _sentences(texts: list[str]) -> list[dict[str, Any]]:
    return [{"raw": c, "tokens": c.lower().rstrip(".").split()} for c in texts]
