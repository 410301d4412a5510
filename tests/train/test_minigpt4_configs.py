"""configs/minigpt4: MiniGPT-4's two stages and the MultiModal-GPT recipe on a MiniGPT-4 base, each run for 2 steps
on the tiny MiniGPT-4 loaded from its released file layouts (tests/minigpt4_tiny.py), with key=value overrides for
the model and the data root. Checked: what trained (llama_proj alone in stages 1-2, LoRA alone in the cross
recipe), the recipe's numbers, and the labels of the batches that trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmgpt.data.styles.minigpt4 import SEP
from mmgpt.tokens import IGNORE_INDEX, IMAGE_POSITION
from mmgpt.train.config import load_train_config
from tests.minigpt4_tiny import QUERIES, load_tiny, release_files, write_tiny_minigpt4
from tests.train.recording import fit_recording, trained_texts

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "minigpt4"
CAPTIONS = ["A dog runs on the grass.", "A red circle above a blue square.", "Two cats sleep.", "A boat at sea."]
DESCRIPTIONS = ["The image shows a red circle above a blue square.", "A dog runs on the grass near a tree."] * 2


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return write_tiny_minigpt4(tmp_path_factory.mktemp("minigpt4-train"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The files the configs name, in their formats: captions lists, cc_sbu_align, Dolly lines."""
    root = tmp_path_factory.mktemp("data")
    for folder in ("laion", "cc_sbu"):
        (root / folder).mkdir()
        rows = []
        for i, caption in enumerate(CAPTIONS):
            Image.new("RGB", (40, 30), ("red", "green", "blue", "white")[i]).save(root / folder / f"{i}.jpg")
            rows.append({"image": f"{i}.jpg", "caption": caption, "image_id": i})
        (root / folder / "captions.json").write_text(json.dumps(rows))
    (root / "cc_sbu_align" / "image").mkdir(parents=True)
    for i, colour in enumerate(("yellow", "black", "gray", "pink")):
        Image.new("RGB", (30, 40), colour).save(root / "cc_sbu_align" / "image" / f"{i}.jpg")
    annotations = [{"image_id": str(i), "caption": text} for i, text in enumerate(DESCRIPTIONS)]
    (root / "cc_sbu_align" / "filter_cap.json").write_text(json.dumps({"annotations": annotations}))
    dolly = [{"instruction": f"{a} plus {b}?", "context": "", "response": str(a + b)} for a, b in [(1, 2), (3, 4)]]
    (root / "dolly.jsonl").write_text("".join(json.dumps(row) + "\n" for row in dolly))
    joint = {
        "root": str(root),
        "vision_language": [{"name": "cc_sbu_align", "format": "minigpt4", "path": "cc_sbu_align/filter_cap.json"}],
        "language": [{"name": "dolly", "format": "dolly", "path": "dolly.jsonl"}],
        "max_length": 128,
        "batch_size": 2,
        "language_batch_size": 2,
    }
    (root / "joint.yaml").write_text(json.dumps(joint))
    return root


def run_two_steps(config: str, downloads, data_root: Path, tmp_path: Path, *extra: str):
    files = release_files(downloads)
    if config == "stage1.yaml":
        files.pop("checkpoint")  # stage 1 starts from a fresh projection
    overrides = [
        f"model={downloads['root'] / 'tiny-minigpt4.yaml'}",
        *(f"model_options.{key}={value}" for key, value in files.items()),
        "model_options.dtype=float32",
        f"run_dir={tmp_path / 'run'}",
        "max_steps=2",
        "gradient_accumulation=1",
        "precision=fp32",
        "device=cpu",
        "logging.progress=false",
        "checkpoint.every=0",
        *extra,
    ]
    cfg = load_train_config(CONFIGS / config, overrides)
    trainer, result, _, changed, seen, tokenizer = fit_recording(cfg)
    return cfg, trainer, result, changed, seen, tokenizer


@pytest.mark.parametrize("stage", ["stage1.yaml", "stage2.yaml"])
def test_both_stages_train_llama_proj_alone_with_the_recipes_numbers(stage, downloads, data_root, tmp_path):
    overrides = [f"data.root={data_root}", "data.batch_size=2"]
    cfg, trainer, result, changed, seen, tokenizer = run_two_steps(stage, downloads, data_root, tmp_path, *overrides)
    assert result.steps == 2 and changed == {"connector.proj.weight", "connector.proj.bias"}
    assert trainer.trainable["connector"] == 48 * 32 + 48 == trainer.trainable["total"]
    opt = cfg.optimizer
    assert (opt.weight_decay, opt.weight_decay_groups, opt.betas, opt.max_grad_norm) == (0.05, None, [0.9, 0.999], None)
    decayed = [g for g in trainer.optimizer.param_groups if g["weight_decay"]]
    assert [p.shape for g in decayed for p in g["params"]] == [(48, 32)]  # the matrix, not the bias
    assert cfg.trainable == "projection" and cfg.data.language_ratio == 0.0 and cfg.seed == 42
    batch = seen[0]
    assert all(row.tolist().count(IMAGE_POSITION) == QUERIES for row in batch.input_ids)
    if stage == "stage1.yaml":
        assert (opt.lr, opt.min_lr_ratio, opt.warmup_steps, cfg.max_steps) == (1e-4, 0.8, 5000, 2)
        assert cfg.prompt_style == "minigpt4-stage1" and cfg.data.max_length == 65
        assert all(text[:-1] in CAPTIONS and text.endswith("\n") for text in trained_texts(batch, tokenizer))
        for row in batch.input_ids:  # [BOS][image] then the caption: no prompt
            assert row[: 1 + QUERIES].tolist() == [1, *[IMAGE_POSITION] * QUERIES]
    else:
        assert (opt.lr, round(opt.lr * opt.min_lr_ratio, 12), opt.warmup_steps) == (3e-5, 1e-5, 200)
        assert cfg.prompt_style == "minigpt4" and cfg.data.batch_size == 2
        assert all(text[: -len(SEP)] in DESCRIPTIONS and text.endswith(SEP) for text in trained_texts(batch, tokenizer))
        for ids, labels in zip(batch.input_ids, batch.labels, strict=True):  # the answer and ### only
            first = int((labels != IGNORE_INDEX).nonzero()[0])
            prompt = tokenizer.decode([t for t in ids[:first].tolist() if t >= 0], skip_special_tokens=True)
            # each chunk around the image has its own dummy prefix: "<Img>" [image] "▁</Img>..."
            assert prompt.startswith("###Human: <Img> </Img> ") and prompt.endswith(" ###Assistant: ")
            assert tokenizer.convert_ids_to_tokens(int(ids[first - 1])) == "▁"  # the lone ▁, kept


def test_the_multimodal_gpt_recipe_on_a_minigpt4_base_trains_lora_alone(downloads, data_root, tmp_path):
    cfg, trainer, result, changed, seen, tokenizer = run_two_steps(
        "mmgpt-lora.yaml", downloads, data_root, tmp_path, f"data={data_root / 'joint.yaml'}"
    )
    assert cfg.trainable == "lora" and (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 16, 0.0)
    assert cfg.prompt_style == "minigpt4" and cfg.optimizer.lr == 1e-5
    assert changed and all(".lora_A." in n or ".lora_B." in n for n in changed)
    assert all(".self_attn." in n for n in changed)  # the LM's self-attention only
    assert trainer.trainable["self_attention"] == trainer.trainable["total"] == 2 * 16 * (48 + 48) * 4
    assert not [g for g in trainer.optimizer.param_groups if g["weight_decay"]]  # no gated blocks: nothing decayed
    vision_language, language = seen[0], seen[1]  # one of each per step, one template for both
    assert language.media is None and all(t.endswith(SEP) for t in trained_texts(language, tokenizer))
    assert tokenizer.decode(language.input_ids[0].tolist(), skip_special_tokens=True).startswith("###Human: ")
    assert all(t[: -len(SEP)] in DESCRIPTIONS for t in trained_texts(vision_language, tokenizer))
    assert (result.output / "adapter_config.json").is_file()
    tuned, _ = load_tiny(downloads, lora=result.output)  # the run's adapter, as mmgpt.load / --adapter take it
    lora = {n: p for n, p in tuned.named_parameters() if ".lora_" in n}
    assert set(lora) == {n for n, _ in trainer.model.named_parameters() if ".lora_" in n}
    assert all(torch.equal(p, dict(trainer.model.named_parameters())[n]) for n, p in lora.items())


def test_the_shipped_configs_name_the_recipes_data(data_root):
    stage1 = load_train_config(CONFIGS / "stage1.yaml")
    assert [s.format for s in stage1.data.vision_language] == ["coco_captions", "coco_captions"]
    assert (stage1.data.batch_size, stage1.gradient_accumulation, stage1.max_steps) == (64, 4, 20000)
    stage2 = load_train_config(CONFIGS / "stage2.yaml")
    assert [s.format for s in stage2.data.vision_language] == ["minigpt4"]
    assert (stage2.data.batch_size, stage2.max_steps) == (12, 1000)
    assert Path(stage2.model).parts[-2:] == ("minigpt4-stage1", "model")  # stage 2 continues stage 1
    cross = load_train_config(CONFIGS / "mmgpt-lora.yaml")
    assert cross.data.language and cross.data.language_ratio == 1.0
