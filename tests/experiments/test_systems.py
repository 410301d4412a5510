"""`mmgpt experiment systems` end to end on a tiny world with a few steps: every system and finding runs, the table
has its rows, each stage trained exactly what its recipe trains, and each tuned system is one loadable directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from safetensors.torch import load_file

from mmgpt.experiments.measures import repeated_ngrams
from mmgpt.experiments.recipes import NO_LANGUAGE, STAGE1_ONLY, SystemsConfig
from mmgpt.experiments.systems import run


def test_repeated_ngrams_counts_repeats_within_each_text():
    assert repeated_ngrams(["A b c a b c."]) == 1 / 4  # abc, bca, cab, abc
    assert repeated_ngrams(["a b c", "a b c"]) == 0.0  # across texts is no repetition
    assert repeated_ngrams(["too short"]) is None


def changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not before[k].equal(after[k])}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("systems")
    out = Path("systems")  # relative, as the CLI's default
    cfg = SystemsConfig(
        out=out,
        steps=4,
        batch_size=2,
        scenes=8,
        language=20,
        eval_scenes=1,
        eval_max_new_tokens=6,
        decode_tokens=4,
        chat_new_tokens=3,
    )
    console = Console(record=True, width=200)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        report = run(cfg, console)
    return folder / out, report, console.export_text()


def test_the_table_has_every_system_finding_and_figure(experiment):
    out, report, text = experiment
    systems = report["systems"]
    assert list(systems) == ["multimodal-gpt", "minigpt4", "mplug-owl", STAGE1_ONLY, NO_LANGUAGE]
    for row in (
        "colour",
        "count",
        "language-only tasks",
        "desc. objects P / R",
        "desc. repeated 3-grams",
        "LM positions per image",
        "trained parameters",
        "training time",
        "decode tokens/s",
        "8th chat turn",
    ):
        assert row in text, row
    assert "stage 1 alone vs stage 2" in text and "with vs without the language-only data" in text
    assert [systems[k]["positions_per_image"] for k in ("multimodal-gpt", "minigpt4", "mplug-owl")] == [1, 16, 17]
    for key in ("multimodal-gpt", "minigpt4", "mplug-owl"):
        assert systems[key]["decode_tokens_per_s"] > 0 and len(systems[key]["chat"]) == 8
    assert "decode_tokens_per_s" not in systems[STAGE1_ONLY]
    json.dumps(report)  # the --json file
    assert (out / "table.md").read_text().startswith("|  | MultiModal-GPT | MiniGPT-4 | mPLUG-Owl |")


def test_each_stage_trained_what_its_recipe_trains(experiment):
    out, report, _ = experiment
    stages = {key: [s["trained"] for s in run["stages"]] for key, run in report["systems"].items()}
    assert stages["multimodal-gpt"] == [
        {"self_attention": 98_304, "cross_attention": 31_744, "cross_attention_ff": 36_864}
    ]
    assert stages["minigpt4"] == [{"connector": 18_624}, {"connector": 18_624}]
    assert stages["mplug-owl"] == [
        {"vision": 272_544, "resampler": 226_880, "connector": 18_816},
        {"self_attention": 24_576},
    ]
    assert stages[NO_LANGUAGE] == stages["mplug-owl"]
    assert report["systems"]["minigpt4"]["stages"][0]["prompt_style"] == "minigpt4-stage1"

    def weights(path):
        return load_file(str(path / "model.safetensors"))

    # MiniGPT-4: only the projection moved, in both stages.
    base, stage1, final = (
        weights(p) for p in (out / "bases/minigpt4", out / "minigpt4/stage1/model", out / "models/minigpt4")
    )
    assert changed(base, stage1) == changed(stage1, final) == {"connector.proj.weight", "connector.proj.bias"}
    # mPLUG-Owl: stage 1 the visual side (the LM untouched), stage 2 the LM's q/v projections only (LoRA merged).
    base, stage1, final = (
        weights(p) for p in (out / "bases/mplug-owl", out / "mplug-owl/stage1/model", out / "models/mplug-owl")
    )
    moved = changed(base, stage1)
    assert moved and all(k.split(".")[0] in ("vision_encoder", "resampler", "connector") for k in moved)
    assert any(k.startswith("vision_encoder.") for k in moved) and "connector.end_tokens" in moved
    moved = changed(stage1, final)
    assert moved and all(
        k.startswith("language_model.") and k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved
    )


def test_each_tuned_system_is_one_directory_the_chat_loads(experiment):
    out, report, text = experiment
    import mmgpt

    for key, style in (("multimodal-gpt", "multimodal-gpt"), ("minigpt4", "minigpt4"), ("mplug-owl", "mplug-owl")):
        assert report["systems"][key]["model"] == f"systems/models/{key}"  # as given: relative to the working folder
        model, _ = mmgpt.load(out / "models" / key)
        assert model.prompt_format.style == style
        assert f"mmgpt chat --model systems/models/{key} --image systems/world/heldout/images/" in text
        assert f"mmgpt serve --model systems/models/{key}" in text
