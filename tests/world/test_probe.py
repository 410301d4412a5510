"""`mmgpt world probe`: ridge probes per grid cell on a model's ViT patches and perceiver latents."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from mmgpt.cli import main
from mmgpt.data.images import ImageTransform
from mmgpt.model.build import build_model
from mmgpt.model.checkpoints import save_pretrained
from mmgpt.tokens import special_token_ids
from mmgpt.world.probe import cell_labels, probe_cells, read_cells, ridge_probe, value_token_ids
from mmgpt.world.scene import COLOURS, POSITIONS, SHAPES, Scene, Shape, sample_scenes
from tests.model.conftest import make_tokenizer, tiny_config, tiny_model


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
    assert "per-cell probes, 60 scenes" in printed and "latents" in printed
    assert "not reading grid captions: the tokenizer splits" in printed  # the test model's tokenizer is not the world's
    assert json.loads(out.read_text())["scenes"] == 60
    assert main(["world", "probe", str(saved_tiny), "--scenes", "10"]) == 2
    assert "too few" in capsys.readouterr().out


class FixedReader:
    """Stands in for a model in read_cells: logits from ``choose(input_ids)`` ([b, T] -> token id per position)."""

    def __init__(self, vocab: int, choose, image_id: int, pad: int):
        self.vocab, self.choose = vocab, choose
        self.device = torch.device("cpu")
        self.special = SimpleNamespace(image=image_id, pad=pad)

    def image_transform(self) -> ImageTransform:
        return ImageTransform(size=96)

    def image_placeholders(self) -> tuple[int, ...]:
        return (self.special.image,)

    def __call__(self, input_ids, *, images, attention_mask):
        assert images.shape[:3] == (input_ids.shape[0], 1, 1) and attention_mask.shape == input_ids.shape
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(2, self.choose(input_ids)[..., None], 1.0)
        return type("Out", (), {"logits": logits})()


def test_read_cells_scores_the_value_predicted_before_each_word(tokenizer):
    scenes = sample_scenes(0, "read", 30)
    special = special_token_ids(tokenizer)
    oracle = FixedReader(  # the next token
        len(tokenizer), lambda ids: torch.cat([ids[:, 1:], ids[:, :1]], dim=1), special.image, special.pad
    )
    assert read_cells(oracle, tokenizer, scenes, batch_size=7) == {"kind": [1.0] * 9, "colour": [1.0] * 9}
    ids = value_token_ids(tokenizer)
    red_circle = FixedReader(len(tokenizer), lambda t: torch.full_like(t, ids["red"]), special.image, special.pad)
    read = read_cells(red_circle, tokenizer, scenes, batch_size=64)
    for i, position in enumerate(POSITIONS.values()):
        shapes = [s.at(position) for s in scenes if s.at(position) is not None]
        assert read["colour"][i] == sum(s.colour == "red" for s in shapes) / len(shapes)
        assert read["kind"][i] == sum(s.kind == SHAPES[0] for s in shapes) / len(shapes)  # ties: the first value


def test_reading_needs_one_token_per_value_word(tokenizer):
    assert set(value_token_ids(tokenizer)) == {*SHAPES, *COLOURS}
    with pytest.raises(
        ValueError,
        match=r"splits 'square' into 4 tokens \[.*\]; reading cells needs one token per colour and shape word",
    ):
        value_token_ids(make_tokenizer())


def test_probe_cells_reads_grid_captions_with_the_world_tokenizer(tokenizer):
    torch.manual_seed(0)
    model, tokenizer = build_model(tiny_config(vocab_size=len(tokenizer)), tokenizer=tokenizer)
    figures = probe_cells(model.eval(), tokenizer, scenes=60)
    assert set(figures["accuracy"]) == {"patches", "latents", "read"} and set(figures["features"]) == {
        "patches",
        "latents",
    }
    for attribute in ("kind", "colour"):
        read = figures["accuracy"]["read"][attribute]
        assert len(read) == 9 and all(0.0 <= a <= 1.0 for a in read)
        assert figures["mean"]["read"][attribute] == pytest.approx(sum(read) / 9)
