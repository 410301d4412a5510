"""`mmgpt eval BENCHMARK` end to end on the embedded tiny-world model, which answers questions about the generated
world: a VQA-style benchmark (POPE, generated answers), captioning (COCO Karpathy layout, in-context examples from
its train split), log-likelihood ranking (A-OKVQA multiple choice, HatefulMemes, MMLU), resuming after a kill,
refusing to mix settings, missing images, a prefix model in its chat format, RICES and two gloo ranks.

The model's numbers are whatever the tiny base answers (greedy decoding on CPU is deterministic): they pin the path
from files to scores; the scorers' own golden numbers are in test_score_only.py and tests/evaluate/benchmarks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmgpt.cli import main
from mmgpt.evaluate import ask as ask_module
from mmgpt.evaluate.benchmarks.caption_metrics import caption_metrics_problem
from mmgpt.evaluate.prompts import PromptSpec
from mmgpt.evaluate.runner import EvalSettings, Progress, evaluate_benchmark
from tests.evaluate.benchmarks.published import write_mmlu
from tests.evaluate.conftest import WORLD_QA
from tests.toy_prefix import make_tokenizer, make_toy


def run(capsys, *args: str) -> tuple[int, str]:
    code = main(["eval", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pope_end_to_end(world, world_files, tmp_path, capsys):
    out = tmp_path / "pope"
    args = ["pope", "--data", str(world_files["pope"]), "--images", str(world), "--model", "tiny-world"]
    code, text = run(capsys, *args, "--template", WORLD_QA, "--out", str(out))
    assert code == 0, text
    assert f"template: {WORLD_QA!r}" in text and "pope_f1" in text  # the prompt is printed with the table
    summary = json.loads((out / "metrics.json").read_text())
    (result,) = summary["results"]
    # 12 probes (a shape present, one absent, per scene); the base says yes to 11: tp 6, fp 5, tn 1.
    assert result["mean"] == pytest.approx(
        {
            "pope_accuracy": 7 / 12,
            "pope_precision": 6 / 11,
            "pope_recall": 1.0,
            "pope_f1": 12 / 17,
            "pope_yes_ratio": 11 / 12,
        }
    )
    run_dir = out / "shots0-seed42"
    answers = lines(run_dir / "pope_results.json")  # POPE's answer file: one {"question_id", "question", "answer"}
    prompts = lines(run_dir / "prompts.jsonl")
    assert len(answers) == len(prompts) == 12 and answers[0]["question"] == "Is there a diamond in the image?"
    assert prompts[0]["prompt"] == "<image>Question: Is there a diamond in the image? Answer:"
    assert prompts[0]["images"] == [str(world / "heldout" / "images" / "h00000.png")]
    # the written predictions re-score to the same numbers without the model
    code, text = run(capsys, "score", "pope", "--data", str(world_files["pope"]), "--predictions",
                     str(run_dir / "pope_results.json"), "--out", str(tmp_path / "rescored.json"))  # fmt: skip
    assert code == 0, text
    assert json.loads((tmp_path / "rescored.json").read_text())["metrics"] == pytest.approx(result["mean"])


@pytest.mark.skipif(caption_metrics_problem() is not None, reason=caption_metrics_problem() or "")
def test_captions_with_examples_from_the_train_split(world, world_files, tmp_path, capsys):
    out = tmp_path / "coco"
    args = ["coco", "--data", str(world_files["coco"]), "--images", str(world), "--model", "tiny-world"]
    code, text = run(capsys, *args, "--template", "<image>{answer}", "--shots", "2", "--no-meteor",
                     "--max-new-tokens", "30", "--out", str(out))  # fmt: skip
    assert code == 0, text
    (result,) = json.loads((out / "metrics.json").read_text())["results"]
    assert result["trials"][0]["n"] == 6 and result["mean"]["CIDEr"] > 1.0  # the base captions its world well
    prompts = lines(out / "shots2-seed42" / "prompts.jsonl")
    assert all(p["prompt"].count("<|endofchunk|>") == 2 and len(p["images"]) == 3 for p in prompts)
    train = {f"{world}/images/{name}" for name in os.listdir(world / "images")}
    assert all(set(p["images"][:2]) <= train for p in prompts)  # examples from the Karpathy train split
    results = json.loads((out / "shots2-seed42" / "coco_results.json").read_text())
    assert set(results[0]) == {"image_id", "caption"}


def test_multiple_choice_by_likelihood(tiny_world, world, world_files, tmp_path):
    settings = EvalSettings(
        "aokvqa", str(world_files["aokvqa"]), str(world), prompt=PromptSpec(template=WORLD_QA), model_name="t"
    )
    summary = evaluate_benchmark(*tiny_world, settings, tmp_path)
    (result,) = summary["results"]
    assert result["mean"] == {"aokvqa_multiple_choice": 0.5, "aokvqa_direct_answer": 0.0}
    record = lines(tmp_path / "shots0-seed42" / "records.rank0.jsonl")[0]
    assert record["query"]["candidates"] == [" circle", " triangle", " star", " diamond"]
    assert len(record["scores"]) == 4 and record["prediction"]["multiple_choice"] == "diamond"
    written = json.loads((tmp_path / "shots0-seed42" / "aokvqa_results.json").read_text())
    assert written["heldouth00000"] == record["prediction"]  # {question_id: {"multiple_choice", "direct_answer"}}


def test_hateful_memes_and_mmlu_by_likelihood(tiny_world, world, tmp_path):
    images = sorted((world / "heldout" / "images").glob("*.png"))
    rows = [
        {"id": k, "img": f"heldout/images/{p.name}", "label": k % 2, "text": "shapes"} for k, p in enumerate(images)
    ]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    memes = evaluate_benchmark(
        *tiny_world, EvalSettings("hatefulmemes", str(tmp_path / "dev.jsonl"), str(world)), tmp_path / "hm"
    )
    assert set(memes["results"][0]["mean"]) == {"roc_auc", "accuracy"}
    csv = (tmp_path / "hm" / "shots0-seed42" / "hatefulmemes_results.csv").read_text().splitlines()
    assert csv[0] == "id,proba,label" and len(csv) == 7
    data = write_mmlu(tmp_path / "mmlu")
    settings = EvalSettings("mmlu", str(data), shots=[1], options={"subjects": ["anatomy"]})
    mmlu = evaluate_benchmark(*tiny_world, settings, tmp_path / "mmlu-run")
    assert mmlu["results"][0]["trials"][0]["n"] == 1
    (prompt,) = lines(tmp_path / "mmlu-run" / "shots1-seed42" / "prompts.jsonl")
    assert prompt["prompt"].startswith("The following are multiple choice questions (with answers) about anatomy.")
    assert "Dev question?" in prompt["prompt"] and prompt["candidates"] == [" A", " B", " C", " D"]


class Interrupt(Progress):
    """Kills the run (as Ctrl-C would) after the first chunk of answers was written."""

    def advance(self, n: int) -> None:
        raise KeyboardInterrupt


def test_resume_after_interruption(tiny_world, world, world_files, tmp_path, monkeypatch):
    settings = EvalSettings("pope", str(world_files["pope"]), str(world), batch_size=2, model_name="t")
    with pytest.raises(KeyboardInterrupt):
        evaluate_benchmark(*tiny_world, settings, tmp_path / "killed", progress=Interrupt())
    first = lines(tmp_path / "killed" / "shots0-seed42" / "records.rank0.jsonl")
    assert len(first) == 8  # one chunk: 4 batches of 2
    asked = []
    generate = ask_module.generate_answers
    monkeypatch.setattr(ask_module, "generate_answers", lambda m, t, r, **k: asked.extend(r) or generate(m, t, r, **k))
    resumed = evaluate_benchmark(*tiny_world, settings, tmp_path / "killed")
    assert len(asked) == 4  # only the items without an answer
    whole = evaluate_benchmark(*tiny_world, settings, tmp_path / "whole")
    assert resumed["results"][0]["mean"] == whole["results"][0]["mean"]
    with pytest.raises(ValueError, match="holds a run with other settings \\(model_name differ\\)"):
        evaluate_benchmark(*tiny_world, EvalSettings("pope", str(world_files["pope"]), str(world)), tmp_path / "whole")


def test_missing_images_stop_or_are_counted(tiny_world, world, world_files, tmp_path, capsys):
    args = ["pope", "--data", str(world_files["pope"]), "--images", str(tmp_path), "--model", "tiny-world"]
    code, text = run(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 2 and "12 of 12 items name an image that is not there" in text and "--skip-missing-images" in text
    rows = lines(world_files["pope"])[:4]
    rows[1]["image"] = "heldout/images/nothing.png"
    (tmp_path / "pope.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["pope", "--data", str(tmp_path / "pope.json"), "--images", str(world), "--model", "tiny-world"]
    code, text = run(capsys, *args, "--skip-missing-images", "--out", str(tmp_path / "b"))
    assert code == 0, text
    trial = json.loads((tmp_path / "b" / "metrics.json").read_text())["results"][0]["trials"][0]
    assert (
        trial["n"] == 3 and trial["skipped"] == 1 and "nothing.png not found" in trial["skipped_examples"][0]["skipped"]
    )
    assert "1 item(s) skipped, not scored" in text


def test_a_prefix_model_in_its_chat_format(world, world_files, tmp_path):
    tokenizer = make_tokenizer()
    settings = EvalSettings("pope", str(world_files["pope"]), str(world), prompt=PromptSpec("chat"), max_new_tokens=4)
    summary = evaluate_benchmark(
        make_toy(tokenizer),
        tokenizer,
        settings,
        tmp_path,
    )
    assert summary["results"][0]["trials"][0]["n"] == 12
    prompt = lines(tmp_path / "shots0-seed42" / "prompts.jsonl")[0]["prompt"]
    assert "### Image:\n<image>" in prompt and prompt.endswith(
        "Answer the question using a single word or phrase.\n\n### Response:\n"
    )


def test_rices_examples_from_the_model_encoder(tiny_world, world, world_files, tmp_path):
    support = world / "vqa" / "v2_OpenEnded_mscoco_train2014_questions.json"
    settings = EvalSettings("vqav2", str(world_files["vqav2"]), shots=[2], support=str(support), selection="rices",
                            cache_dir=str(tmp_path / "features"), limit=4, max_new_tokens=3)  # fmt: skip
    evaluate_benchmark(*tiny_world, settings, tmp_path / "run")
    cached = sorted((tmp_path / "features").glob("features-*.pt"))
    assert len(cached) == 2  # the support set's and the questions' features
    prompts = lines(tmp_path / "run" / "shots2-seed42" / "prompts.jsonl")
    assert all(len(p["demos"]) == 2 and "train2014" in p["images"][0] for p in prompts)


@pytest.mark.slow
def test_two_gloo_ranks(world, world_files, tmp_path):
    """torchrun with two CPU processes: each answers its half, rank 0 merges; the numbers equal one process's."""
    args = ["eval", "pope", "--data", str(world_files["pope"]), "--images", str(world), "--model", "tiny-world",
            "--batch-size", "2", "--template", WORLD_QA]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517"]
    done = subprocess.run(
        [*command, "-m", "mmgpt", *args, "--out", str(tmp_path / "two")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = sorted((tmp_path / "two" / "shots0-seed42").glob("records.rank*.jsonl"))
    assert [len(lines(r)) for r in records] == [6, 6]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = (json.loads((tmp_path / d / "metrics.json").read_text())["results"] for d in ("two", "one"))
    assert two[0]["mean"] == one[0]["mean"]


def test_open_ended_answers_come_from_the_owleval_runner(tiny_world, world, tmp_path, capsys):
    """`mmgpt eval owleval` answers through owleval.answer_owleval: the same file as run_owleval writes."""
    from mmgpt.evaluate.owleval import run_owleval

    asked = [("h00000.png", "What shapes are there?", ["single_turn"]),
             ("h00001.png", "What colour is the star?", ["single_turn", "multi_turn"]),
             ("h00001.png", "And the square?", ["multi_turn"])]  # fmt: skip
    rows = [
        {"image": image, "question_id": k + 1, "question": question, "ability": "a", "category": category}
        for k, (image, question, category) in enumerate(asked)
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = world / "heldout" / "images"
    args = ["owleval", "--data", str(questions), "--images", str(images), "--model", "tiny-world"]
    code, text = run(capsys, *args, "--max-new-tokens", "8", "--out", str(tmp_path / "run"))
    assert code == 0, text
    ours = lines(tmp_path / "run" / "shots0-seed42" / "owleval_results.json")
    theirs = lines(run_owleval(*tiny_world, questions, tmp_path / "theirs.jsonl", image_root=images, max_new_tokens=8))
    assert [r["answer"] for r in ours] == [r["answer"] for r in theirs]
    prompt = lines(tmp_path / "run" / "shots0-seed42" / "prompts.jsonl")[2]["prompt"]
    assert "What colour is the star?" in prompt and prompt.count("<image>") == 1  # the second turn, image on the first


def test_mplug_owl_in_its_own_template(world, world_files, tmp_path, capsys):
    """A prefix model loaded from its release layout: --prompt auto takes its chat template; choices ranked."""
    from tests.model.mplug_owl_tiny import write_tiny_release

    release = write_tiny_release(tmp_path / "mplug-owl-tiny")
    args = ["aokvqa", "--data", str(world_files["aokvqa"]), "--images", str(world), "--model", str(release)]
    code, text = run(capsys, *args, "--max-new-tokens", "4", "--out", str(tmp_path / "run"))
    assert code == 0, text
    assert "prompt format: chat" in text
    prompt = lines(tmp_path / "run" / "shots0-seed42" / "prompts.jsonl")[0]
    assert prompt["prompt"].startswith("The following is a conversation between a curious human and AI assistant.")
    assert "\nHuman: <image>\nHuman: Which shape is at the bottom?" in prompt["prompt"]
    assert prompt["prompt"].endswith("\nAI: ") and prompt["candidates"] == ["circle", "triangle", "star", "diamond"]


def test_open_ended_prompts_are_recorded_as_they_were_asked(tiny_world, world, tmp_path, capsys, monkeypatch):
    """With a custom --template the OwlEval questions are asked in it, and prompts.jsonl records what was asked
    (the runner builds each turn's prompt with the harness's query builder)."""
    from mmgpt.evaluate import owleval

    asked_ids: list[list[int]] = []
    real = owleval.generate_answers

    def spy(model, tokenizer, requests, **kwargs):
        asked_ids.extend(r.input_ids for r in requests)
        return real(model, tokenizer, requests, **kwargs)

    monkeypatch.setattr(owleval, "generate_answers", spy)
    rows = [
        {"image": "h00001.png", "question_id": k + 1, "question": q, "ability": "a", "category": ["multi_turn"]}
        for k, q in enumerate(["What colour is the star?", "And the square?"])
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = world / "heldout" / "images"
    args = ["owleval", "--data", str(questions), "--images", str(images), "--model", "tiny-world"]
    code, text = run(
        capsys, *args, "--template", "Briefly: {question}", "--max-new-tokens", "4", "--out", str(tmp_path)
    )
    assert code == 0, text
    recorded = [r["prompt"] for r in lines(tmp_path / "shots0-seed42" / "prompts.jsonl")]
    tokenizer = tiny_world[1]
    sent = [tokenizer.decode(ids) for ids in asked_ids]
    assert len(sent) == len(recorded) == 2
    assert all("Briefly: " in s for s in sent) and "Briefly: And the square?" in recorded[1]
    for prompt, decoded in zip(recorded, sent, strict=True):
        assert decoded.replace(" ", "").endswith(prompt.replace("<image>", "").replace(" ", "")[-40:])
