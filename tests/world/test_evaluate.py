"""evaluate_world and `mmgpt eval` end to end on a tiny random model (the values are whatever they are)."""

from __future__ import annotations

import json

import pytest
import torch

from mmgpt.cli import main
from mmgpt.config import (
    ModelConfig,
    load_yaml,
)
from mmgpt.data.document import Document
from mmgpt.data.tokenize import ConversationTokenizer
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints import save_pretrained
from mmgpt.world.evaluate import evaluate_world, generate_responses, qa_prompt
from mmgpt.world.items import language_items, scene_items
from mmgpt.world.report import results_table
from mmgpt.world.write import load_heldout
from tests.model.conftest import tiny_config

PRESET = "src/mmgpt/presets/model/tiny-world.yaml"


@pytest.fixture(scope="module")
def model(tokenizer):
    """The model tests' tiny LLaMA Flamingo on the world's tokenizer (its 32 px ViT: 96 px images are resized)."""
    torch.manual_seed(0)
    return build_model(tiny_config("llama", vocab_size=len(tokenizer)), tokenizer=tokenizer)


def test_evaluate_world_end_to_end(model, world):
    model, tokenizer = model
    results = evaluate_world(model, tokenizer, world, limit=2, batch_size=4, max_new_tokens=12)
    heldout = load_heldout(world)
    scenes = heldout.scenes[:2]
    assert results["questions"]["colour"] == 2 and results["questions"]["reasoning"] == 2
    assert set(results["accuracy"]) <= {"colour", "shape", "count", "position", "word", "reasoning"}
    assert all(0.0 <= v <= 1.0 for v in results["accuracy"].values())
    assert set(results["response_length"]) == {"question", "rationale", "detail", "caption", "language"}
    assert results["language"]["n"] == 2 and results["description"]["n"] == 2
    assert results["items"] == len(results["records"]) == 2 * 7 + sum(s.word is not None for s in scenes) + 2
    assert json.loads(json.dumps(results))["items"] == results["items"]
    assert results_table({"before": results, "after": results}).row_count >= 15
    # In memory: the same scenes rendered on the fly give the same responses.
    again = evaluate_world(model, tokenizer, scenes, language=heldout.language[:2], batch_size=4, max_new_tokens=12)
    assert [r["response"] for r in again["records"]] == [r["response"] for r in results["records"]]


def test_qa_prompts_are_the_pretraining_text_up_to_the_answer(world, tokenizer):
    heldout = load_heldout(world)
    item = scene_items(heldout.scenes[0], heldout.images[0])[0]
    question = item.prompt.messages[-1].text
    assert qa_prompt(item) == f"<image>Question: {question} Answer:"
    # The tokens the evaluation sends are exactly the start of the pretraining document asking that question.
    encoder = ConversationTokenizer(tokenizer)
    document = encoder(Document(f"{qa_prompt(item)} {item.reference}<|endofchunk|>", images=[heldout.images[0]]))
    prompt = encoder.prefix + encoder.encode([qa_prompt(item)])[0]
    assert document.input_ids[: len(prompt)] == prompt
    ordering = next(t for t in heldout.language if t.input)
    assert qa_prompt(language_items([ordering])[0]) == f"Question: {ordering.instruction} {ordering.input} Answer:"


def test_qa_format_evaluates_and_unknown_formats_are_named(model, world):
    model, tokenizer = model
    results = evaluate_world(model, tokenizer, world, limit=1, batch_size=4, max_new_tokens=6, prompt_format="qa")
    assert results["items"] == len(results["records"]) and results["language"]["n"] == 1
    assert all("###" not in r["response"] and "Question:" not in r["response"] for r in results["records"])
    with pytest.raises(ValueError, match="prompt_format='chat'; choose one of template, qa"):
        generate_responses(model, tokenizer, [], prompt_format="chat")


def test_mmgpt_eval_command(model, world, tmp_path, capsys):
    saved = save_pretrained(*model, tmp_path / "model")
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(saved),
                "--world",
                str(world),
                "--limit",
                "1",
                "--max-new-tokens",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "colour accuracy" in capsys.readouterr().out
    assert json.loads(out.read_text())["items"] >= 8
    qa = ["eval", "--model", str(saved), "--world", str(world), "--limit", "1", "--max-new-tokens", "4"]
    assert main([*qa, "--prompt-format", "qa", "--out", str(out)]) == 0
    assert all("###" not in r["response"] for r in json.loads(out.read_text())["records"])
    assert main(["eval", "--model", str(tmp_path / "nothing"), "--world", str(world)]) == 2


def test_tiny_world_preset_fits_the_world_tokenizer(tokenizer):
    cfg = load_yaml(ModelConfig, PRESET)
    assert cfg.lm.hf_config["vocab_size"] == len(tokenizer)  # no embedding row added at build time
    with torch.device("meta"):
        model, _ = build_model(cfg, tokenizer=tokenizer, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 25e6  # the fp32 weights stay well under the 25 MB the repository can hold
    assert model.vision_encoder.image_size == 96 and model.config.cross_attention.media_mask == "previous"
