"""configs/mplug-owl: both stages (and stage 2 with the abstractor, as the paper says) run for 2 steps on a tiny
mPLUG-Owl - stage 1 from tiny LLaMA and CLIP directories as the paper starts it, stage 2 from a tiny release
directory - with key=value overrides for the model and the data root. Checked: what trained, the recipe's numbers,
the labels of the batches that trained, and that the outputs load back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM

import mmgpt
from mmgpt.data.styles.mplug_owl import SYSTEM
from mmgpt.model.contract import CONNECTOR, RESAMPLER, VISION
from mmgpt.tokens import IGNORE_INDEX, IMAGE_POSITION
from mmgpt.train.config import load_train_config
from tests.model.mplug_owl_tiny import TEXT_CONFIG, tokenizer_model, write_tiny_release
from tests.train.recording import fit_recording, trained_texts

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mplug-owl"
ANSWERS = ["A red circle.", "It is blue.", "She shuddered.", "Hello there."]
PER_IMAGE = 7  # the tiny release: 6 queries + vit_eos


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    """A tiny release (stage 2's start) and, for stage 1, a LLaMA directory, a CLIP directory and a model YAML
    with tiny abstractor numbers on the mplug-owl preset."""
    root = tmp_path_factory.mktemp("mplug-owl-train")
    spm = tokenizer_model()
    write_tiny_release(root / "mplug-owl-tiny-pt", model=spm)
    text = dict(TEXT_CONFIG)
    torch.manual_seed(0)
    LlamaForCausalLM(AutoConfig.for_model(text.pop("model_type"), **text)).save_pretrained(root / "llama")
    (root / "llama" / "tokenizer.model").write_bytes(spm)
    (root / "llama" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    clip.update(dict(image_size=24, patch_size=8, hidden_act="quick_gelu", projection_dim=32))
    CLIPVisionModel(clip).save_pretrained(root / "clip")
    (root / "tiny-mplug-owl.yaml").write_text(
        "base: mplug-owl-llama-7b\nprefix:\n  abstractor: {layers: 2, heads: 4, intermediate: 48, queries: 6}\n"
        "dtype: float32\n"
    )
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Caption documents (stage 1) and the SFT jsonl with image and text-only rows (stage 2), as released."""
    root = tmp_path_factory.mktemp("data")
    captions, sft = [], []
    for i, colour in enumerate(("red", "green", "blue", "white")):
        Image.new("RGB", (30, 40), colour).save(root / f"{i}.jpg")
        captions.append({"images": [f"{i}.jpg"], "text": f"<image>A {colour} picture."})
        sft.append({"image": [f"{i}.jpg"], "text": f"{SYSTEM}\nHuman: <image>\nHuman: What is it?\nAI: {ANSWERS[i]}",
                    "task_type": "llava_sft"})  # fmt: skip
        sft.append({"text": f"{SYSTEM}\nHuman: Say {i}.\nAI: {ANSWERS[-1 - i]}", "task_type": "quora_chat_sft"})
    (root / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in captions))
    for name in ("sft_v0.1_train.jsonl", "sft_v0.1_dev.jsonl"):
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in sft))
    return root


def run_two_steps(config: str, downloads: Path, data_root: Path, tmp_path: Path, *extra: str):
    overrides = [
        f"data.root={data_root}",
        "data.batch_size=2",
        "data.max_length=256",
        f"run_dir={tmp_path / 'run'}",
        "model_options.dtype=float32",
        "max_steps=2",
        "gradient_accumulation=1",
        "precision=fp32",
        "device=cpu",
        "logging.progress=false",
        "checkpoint.every=0",
        *extra,
    ]
    cfg = load_train_config(CONFIGS / config, overrides)
    trainer, result, model, changed, seen, tokenizer = fit_recording(cfg)
    return cfg, trainer, result, model, changed, seen, tokenizer


def test_stage1_trains_the_visual_side_with_the_llm_frozen(downloads, data_root, tmp_path):
    model_options = [f"model={downloads / 'tiny-mplug-owl.yaml'}", f"model_options.lm={downloads / 'llama'}"]
    model_options.append(f"model_options.clip={downloads / 'clip'}")
    cfg, trainer, result, model, changed, seen, tokenizer = run_two_steps(
        "stage1.yaml", downloads, data_root, tmp_path, *model_options
    )
    assert cfg.trainable == "visual" and cfg.prompt_style == "mplug-owl" and result.steps == 2
    groups = {model.parameter_group(name) for name in changed}
    assert groups == {VISION, RESAMPLER, CONNECTOR}
    trainable = trainer.trainable
    assert trainable["total"] == trainable[VISION] + trainable[RESAMPLER] + trainable[CONNECTOR]
    assert trainable[VISION] == sum(p.numel() for p in model.vision_encoder.parameters())
    assert not any(name.startswith("language_model.") for name in changed)
    assert model.tokens_per_image == PER_IMAGE and model.resampler.width == 32  # the abstractor takes the ViT width
    opt = cfg.optimizer
    assert (opt.lr, opt.weight_decay, opt.weight_decay_groups, opt.schedule) == (1e-4, 0.1, None, "cosine")
    batch = seen[0]
    for row, labels in zip(batch.input_ids, batch.labels, strict=True):  # BOS, the image, then the trained caption
        assert row[: 1 + PER_IMAGE].tolist() == [1, *[IMAGE_POSITION] * PER_IMAGE]
        assert (labels[: 1 + PER_IMAGE] == IGNORE_INDEX).all()
    assert all(text.startswith("A ") and text.endswith("picture.</s>") for text in trained_texts(batch, tokenizer))
    loaded, _ = mmgpt.load(result.output)  # the whole model, saved
    assert torch.equal(loaded.connector.end_tokens, model.connector.end_tokens)


@pytest.mark.parametrize("abstractor", [False, True])
def test_stage2_trains_lora_on_q_and_v_and_optionally_the_abstractor(downloads, data_root, tmp_path, abstractor):
    extra = [f"model={downloads / 'mplug-owl-tiny-pt'}", f"validation.data.root={data_root}", "validation.batches=1"]
    extra += ["train_groups=[resampler,connector]"] if abstractor else []
    cfg, trainer, result, model, changed, seen, tokenizer = run_two_steps(
        "stage2.yaml", downloads, data_root, tmp_path, *extra
    )
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 32, 0.05)
    opt = cfg.optimizer
    assert (opt.lr, opt.warmup_steps, opt.schedule, opt.min_lr_ratio) == (2e-5, 50, "linear", 0.0)
    assert (opt.weight_decay, opt.weight_decay_groups, opt.max_grad_norm, cfg.epochs) == (1e-4, None, 1.0, 3.0)
    lora = {n for n in changed if ".lora_" in n}
    assert lora and {n.split(".lora_")[0].rsplit(".", 1)[1] for n in lora} == {"q_proj", "v_proj"}
    assert {n.split(".")[0] for n in changed - lora} == ({"resampler", "connector"} if abstractor else set())
    assert trainer.trainable["self_attention"] == 2 * 8 * ((64 + 64) + (64 + 64))  # layers x r x (in + out), q/v
    assert trainer.trainable[VISION] == 0 and trainer.trainable[RESAMPLER] == (
        sum(p.numel() for p in model.resampler.parameters()) if abstractor else 0
    )
    decayed = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] == 1e-4 for p in g["params"]}
    matrices = {id(p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2}
    assert decayed == matrices  # every trained matrix decays, in every group
    texts = [text for batch in seen for text in trained_texts(batch, tokenizer)]
    assert texts and all(text.removesuffix("</s>") in ANSWERS for text in texts)  # each answer and its EOS
    counts = {c for batch in seen for c in batch.image_counts.tolist()}
    assert counts == {0, 1}  # language-only and image rows in the one stream
    # The adapter (and the abstractor beside it) loads onto the released directory.
    tuned, _ = mmgpt.load(downloads / "mplug-owl-tiny-pt", dtype="float32", lora=result.output)
    assert torch.equal(tuned.resampler.query_tokens, model.resampler.query_tokens)
    for name, p in model.named_parameters():
        if ".lora_" in name:
            assert torch.equal(tuned.get_parameter(name), p), name


def test_the_shipped_configs_name_the_recipes_data():
    stage1 = load_train_config(CONFIGS / "stage1.yaml")
    assert [s.format for s in stage1.data.vision_language] == ["interleaved"] and stage1.data.language_ratio == 0
    assert stage1.model == "mplug-owl-llama-7b" and set(stage1.model_options) == {"lm", "clip", "dtype"}
    stage2 = load_train_config(CONFIGS / "stage2.yaml")
    assert [(s.format, s.options) for s in stage2.data.vision_language] == [("mplug_owl", {"rows": "all"})]
    assert stage2.data.language_ratio == 0.0  # one stream, language-only and multimodal rows mixed as released
    assert stage2.data.batch_size * stage2.gradient_accumulation == 32  # the released script's real batch
    assert stage2.data.max_length == 2048 and stage2.train_groups == []
    assert stage2.lora.self_attention_modules == ["self_attn.q_proj", "self_attn.v_proj"]
    assert not stage2.lora.cross_attention and not stage2.lora.cross_attention_ff and not stage2.lora.lm_mlp
    paper = load_train_config(CONFIGS / "stage2.yaml", ["train_groups=[resampler,connector]"])
    assert paper.train_groups == [RESAMPLER, CONNECTOR]
