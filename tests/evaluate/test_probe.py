"""`mmgpt world probe`: ridge probes per grid cell on a model's ViT patches and perceiver latents."""

from __future__ import annotations

import json

import pytest
import torch

from mmgpt.cli import main
from mmgpt.data.world.scene import Scene, Shape
from mmgpt.evaluate.probe import cell_labels, probe_cells, ridge_probe
from mmgpt.model.checkpoints import save_pretrained
from tests.model.conftest import tiny_model


def test_a_label_written_in_the_features_is_read_exactly():
    labels = ["circle", "star", "empty", "square"] * 10
    features = torch.stack(
        [torch.tensor([float(label == c) for c in ("circle", "star", "square")]) for label in labels]
    )
    assert ridge_probe(features, labels, ridge=1e-3) == 1.0


def test_features_that_say_nothing_give_the_training_majority_on_the_scored_rows():
    labels = ["a", "a", "a", "b", "b", "a", "a", "a", "a", "b"]  # fit on 8 (6 a), score the last 2: a, b
    features = torch.zeros(10, 3)
    assert ridge_probe(features, labels) == 0.5
    assert ridge_probe(features, labels, scored=[True] * 9 + [False]) == 1.0
    with pytest.raises(ValueError, match="no held-out row is scored"):
        ridge_probe(features, labels, scored=[True] * 8 + [False, False])
    with pytest.raises(ValueError, match=r"train_fraction=1\.0 leaves no rows"):
        ridge_probe(features, labels, train_fraction=1.0)


def test_cell_labels_name_the_shape_in_the_cell_or_empty():
    scenes = [
        Scene("s0", "k0", (Shape("star", "red", "small", 0, 0), Shape("circle", "blue", "large", 2, 1))),
        Scene("s1", "k1", (Shape("square", "green", "small", 2, 1),)),
    ]
    assert cell_labels(scenes, "kind", 0, 0) == ["star", "empty"]
    assert cell_labels(scenes, "colour", 2, 1) == ["blue", "green"]
    assert cell_labels(scenes, "kind", 1, 1) == ["empty", "empty"]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    model, tokenizer = tiny_model()
    return save_pretrained(model.eval(), tokenizer, tmp_path_factory.mktemp("probe") / "model")


def test_probe_cells_reads_both_feature_sets_for_every_cell_and_attribute(saved_tiny):
    from mmgpt.load import load

    model, _ = load(saved_tiny)
    figures = probe_cells(model, scenes=60)
    patches = model.vision_encoder.image_size // model.vision_encoder.model.config.patch_size
    width = model.vision_encoder.model.config.hidden_size
    assert figures["features"] == {"patches": [patches**2, width], "latents": [model.perceiver.num_latents, width]}
    assert figures["cells"] == [[r, c] for r in range(3) for c in range(3)]
    for name in ("patches", "latents"):
        for attribute in ("kind", "colour"):
            accuracies = figures["accuracy"][name][attribute]
            assert len(accuracies) == 9 and all(0.0 <= a <= 1.0 for a in accuracies)
            assert figures["mean"][name][attribute] == pytest.approx(sum(accuracies) / 9)


def test_the_command_prints_the_table_and_writes_the_json(saved_tiny, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["world", "probe", str(saved_tiny), "--scenes", "60", "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps to the terminal width
    assert "per-cell linear probes, 60 scenes" in printed and "latents" in printed
    assert json.loads(out.read_text())["scenes"] == 60
    assert main(["world", "probe", str(saved_tiny), "--scenes", "10"]) == 2
    assert "too few" in capsys.readouterr().out
