"""Writing a world to disk: images, the task data in the published formats, data configs, the pretraining corpus,
the tokenizer, and held-out scenes with their ground truth.

Layout of ``OUT``::

    world.json                        what was generated: seed, counts, image size, files
    images/00000.png ...              training images
    llava/detail_world.json           LLaVA detail_23k layout            (format llava)
    llava/conversation_world.json     LLaVA conversation_58k layout      (format llava)
    aokvqa/aokvqa_world_train.json    A-OKVQA layout                     (format aokvqa)
    coco/captions_world.json          COCO captions_train2017 layout     (format coco_captions)
    ocr_vqa/dataset.json              OCR-VQA layout                     (format ocr_vqa)
    vqa/v2_*_questions.json, v2_*_annotations.json, vqa/train2014/*.jpg  (format vqa)
    language/alpaca_world.json        Alpaca layout                      (format alpaca)
    language/dolly_world.jsonl        Dolly layout                       (format dolly)
    pretrain/{captions,grid,index,where,tally,interleaved,text,questions,qa,dialogues,text-dialogues}.jsonl
                                      {"images": [...], "text": "<image>...<|endofchunk|>"}
    tokenizer/                        the world's tokenizer (special tokens included)
    data.yaml                         the paper's recipe: no one-word (VQA) data
    data-one-word.yaml                the same plus the one-word VQA data
    heldout/scenes.json, heldout/images/h00000.png ...   evaluation scenes and their ground truth
    heldout/language.json             held-out language-only tasks

Everything is a function of the arguments: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mmgpt.data.config import DataConfig, SourceConfig, dump_data_config
from mmgpt.world import corpus, formats
from mmgpt.world.config import IMAGE_SIZE, WorldConfig
from mmgpt.world.language import LanguageTask, language_tasks
from mmgpt.world.render import save_scene
from mmgpt.world.scene import Scene, sample_scenes
from mmgpt.world.tasks import scene_tasks

MANIFEST = "world.json"
IMAGES = "images"
TOKENIZER = "tokenizer"
DATA_CONFIG = "data.yaml"
DATA_CONFIG_ONE_WORD = "data-one-word.yaml"
HELDOUT_SCENES = "heldout/scenes.json"
HELDOUT_LANGUAGE = "heldout/language.json"
FORMAT_VERSION = 1


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def world_data_config(
    world: str | Path | None = None, *, one_word: bool = False, language: bool = True, image_size: int = IMAGE_SIZE
) -> DataConfig:
    """The data config of a world: the paper's mix (+ the one-word VQA data with ``one_word``; without the
    language-only data when ``language`` is False, the vision-language-only ablation). ``world`` None leaves
    paths relative (for the YAML written beside the data)."""
    root = None if world is None else str(Path(world).resolve())

    def source(name: str, format: str, path: str, images: str | None = IMAGES) -> SourceConfig:
        return SourceConfig(name=name, format=format, path=path, images=images)

    vision_language = [
        source("world_detail", "llava", "llava/detail_world.json"),
        source("world_conversation", "llava", "llava/conversation_world.json"),
        source("world_aokvqa", "aokvqa", "aokvqa/aokvqa_world_train.json"),
        source("world_coco", "coco_captions", "coco/captions_world.json"),
        source("world_ocr_vqa", "ocr_vqa", "ocr_vqa/dataset.json"),
    ]
    if one_word:
        vision_language.append(source("world_vqa", "vqa", f"vqa/{formats.VQA_QUESTIONS_FILE}", images="vqa"))
    languages = [
        source("world_dolly", "dolly", "language/dolly_world.jsonl", images=None),
        source("world_alpaca", "alpaca", "language/alpaca_world.json", images=None),
    ]
    return DataConfig(
        vision_language=vision_language,
        language=languages if language else [],
        language_ratio=1.0 if language else 0.0,
        tokenizer=TOKENIZER if root is None else str(Path(root) / TOKENIZER),
        root="." if root is None else root,
        max_length=384,
        batch_size=8,
        language_batch_size=8,
        image_size=image_size,
    )


def _write_images(scenes: list[Scene], folder: Path, size: int, on_progress: Callable[[int], None] | None) -> None:
    for scene in scenes:
        save_scene(scene, folder / f"{scene.id}.png", size=size)
        if on_progress is not None:
            on_progress(1)


def generate_world(
    out: str | Path,
    cfg: WorldConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the world of ``cfg`` to ``out``; returns the manifest (also written to ``out/world.json``).

    ``tokenizer``: saved instead of training the world's tokenizer (which depends only on ``cfg.vocab_size``;
    callers that already hold it save ~2 s). ``on_progress(n)`` is called as images are written
    (``2 * scenes + heldout`` in all).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scenes = sample_scenes(cfg.seed, "train", cfg.scenes)
    heldout = sample_scenes(cfg.seed, "heldout", cfg.heldout, exclude=scenes, prefix="h")
    _write_images(scenes, out / IMAGES, cfg.image_size, on_progress)
    for i, scene in enumerate(scenes):
        save_scene(scene, out / "vqa" / formats.vqa_image_path(i), size=cfg.image_size, format="JPEG")
        if on_progress is not None:
            on_progress(1)
    _write_images(heldout, out / "heldout" / IMAGES, cfg.image_size, on_progress)

    tasks = [scene_tasks(scene) for scene in scenes]
    _write_json(out / "llava/detail_world.json", [formats.llava_detail_row(t, i) for i, t in enumerate(tasks)])
    _write_json(
        out / "llava/conversation_world.json", [formats.llava_conversation_row(t, i) for i, t in enumerate(tasks)]
    )
    _write_json(out / "aokvqa/aokvqa_world_train.json", [formats.aokvqa_row(t, i) for i, t in enumerate(tasks)])
    _write_json(out / "coco/captions_world.json", formats.coco_captions(tasks, cfg.image_size))
    _write_json(out / "ocr_vqa/dataset.json", formats.ocr_vqa(tasks))
    questions, annotations = formats.vqa_files(tasks)
    _write_json(out / "vqa" / formats.VQA_QUESTIONS_FILE, questions)
    _write_json(out / "vqa" / formats.VQA_ANNOTATIONS_FILE, annotations)

    language = language_tasks(cfg.seed, "train", cfg.language)
    alpaca = [t for t in language if t.kind in formats.ALPACA_KINDS]
    _write_json(out / "language/alpaca_world.json", formats.alpaca_rows(alpaca))
    _write_jsonl(
        out / "language/dolly_world.jsonl",
        formats.dolly_rows([t for t in language if t.kind not in formats.ALPACA_KINDS]),
    )

    paths = [f"{IMAGES}/{scene.id}.png" for scene in scenes]
    pretrain = {
        **{
            name: _write_jsonl(out / f"pretrain/{name}.jsonl", corpus.caption_rows(scenes, paths, caption))
            for name, caption in corpus.IMAGE_CAPTIONS.items()
        },
        "interleaved": _write_jsonl(
            out / "pretrain/interleaved.jsonl", corpus.interleaved_rows(scenes, paths, seed=cfg.seed)
        ),
        "text": _write_jsonl(out / "pretrain/text.jsonl", corpus.text_rows(language)),
        "questions": _write_jsonl(out / "pretrain/questions.jsonl", corpus.question_rows(scenes, paths, seed=cfg.seed)),
        "qa": _write_jsonl(out / "pretrain/qa.jsonl", corpus.qa_rows(language)),
        "dialogues": _write_jsonl(out / "pretrain/dialogues.jsonl", corpus.dialogue_rows(scenes, paths, seed=cfg.seed)),
        "text-dialogues": _write_jsonl(
            out / "pretrain/text-dialogues.jsonl", corpus.text_dialogue_rows(language, seed=cfg.seed)
        ),
    }

    tokenizer = tokenizer if tokenizer is not None else corpus.world_tokenizer(vocab_size=cfg.vocab_size)
    tokenizer.save_pretrained(out / TOKENIZER)
    (out / DATA_CONFIG).write_text(dump_data_config(world_data_config(image_size=cfg.image_size)))
    (out / DATA_CONFIG_ONE_WORD).write_text(
        dump_data_config(world_data_config(one_word=True, image_size=cfg.image_size))
    )

    _write_json(
        out / HELDOUT_SCENES,
        {
            "seed": cfg.seed,
            "image_size": cfg.image_size,
            "scenes": [{**s.to_dict(), "image": f"{IMAGES}/{s.id}.png"} for s in heldout],
        },
    )
    _write_json(out / HELDOUT_LANGUAGE, [asdict(t) for t in language_tasks(cfg.seed, "heldout", cfg.heldout_language)])

    manifest = {
        "format": "mmgpt-world",
        "version": FORMAT_VERSION,
        "config": asdict(cfg),
        "counts": {
            "scenes": len(scenes),
            "scenes_with_word": sum(s.word is not None for s in scenes),
            "detail": len(tasks),
            "conversation": len(tasks),
            "conversation_turns": sum(len(t.conversation) for t in tasks),
            "rationale": len(tasks),
            "caption": sum(len(t.captions) for t in tasks),
            "ocr": sum(len(t.ocr) for t in tasks),
            "one_word": sum(len(t.one_word) for t in tasks),
            "language_alpaca": len(alpaca),
            "language_dolly": len(language) - len(alpaca),
            "pretrain": pretrain,
            "heldout_scenes": len(heldout),
            "heldout_language": cfg.heldout_language,
        },
        "data_configs": {"paper": DATA_CONFIG, "one_word": DATA_CONFIG_ONE_WORD},
        "tokenizer": TOKENIZER,
    }
    _write_json(out / MANIFEST, manifest)
    return manifest


@dataclass(frozen=True)
class HeldOut:
    """What evaluation reads back: scenes with their image paths, and language-only tasks."""

    scenes: list[Scene]
    images: list[Path]
    language: list[LanguageTask]
    image_size: int


def load_heldout(world: str | Path) -> HeldOut:
    world = Path(world)
    path = world / HELDOUT_SCENES
    if not path.is_file():
        raise FileNotFoundError(
            f"{world} is not a generated world ({HELDOUT_SCENES} is missing); create one with "
            f"`mmgpt world generate {world}`"
        )
    data = json.loads(path.read_text())
    language = [LanguageTask(**row) for row in json.loads((world / HELDOUT_LANGUAGE).read_text())]
    return HeldOut(
        scenes=[Scene.from_dict(row) for row in data["scenes"]],
        images=[path.parent / row["image"] for row in data["scenes"]],
        language=language,
        image_size=int(data["image_size"]),
    )
