"""Scenes and their images: seeded, valid, and the same bytes every time."""

from __future__ import annotations

import random

import pytest

from mmgpt.world.describe import (
    captions,
    dense_caption,
    detailed_description,
    grid_caption,
    index_caption,
    references,
    tally_caption,
    where_caption,
)
from mmgpt.world.render import png_bytes, render_scene
from mmgpt.world.scene import MAX_SHAPES, POSITIONS, Scene, Shape, sample_scene, sample_scenes


def test_same_key_same_scene_and_bytes():
    a, b = sample_scene("0:train:5", id="x"), sample_scene("0:train:5", id="x")
    assert a == b
    assert png_bytes(render_scene(a)) == png_bytes(render_scene(b))
    assert sample_scene("0:train:6", id="x") != a


def test_scenes_stay_within_the_world():
    scenes = sample_scenes(0, "train", 200)
    assert {len(s.shapes) for s in scenes} == set(range(1, MAX_SHAPES + 1))
    assert 0.3 < sum(s.word is not None for s in scenes) / len(scenes) < 0.7
    for s in scenes:
        assert len({(x.row, x.column) for x in s.shapes}) == len(s.shapes)
        assert [(x.row, x.column) for x in s.shapes] == sorted((x.row, x.column) for x in s.shapes)


def test_held_out_scenes_never_look_like_training_scenes():
    train = sample_scenes(0, "train", 300)
    heldout = sample_scenes(0, "heldout", 100, exclude=train, prefix="h")
    assert not {s.signature for s in train} & {s.signature for s in heldout}
    assert heldout[0].id == "h00000"


def test_round_trip_through_json():
    scene = sample_scene("1:train:0", id="00000")
    assert Scene.from_dict(scene.to_dict()) == scene


def test_render_draws_the_shape_colour_at_its_cell():
    scene = Scene("s", "k", (Shape("square", "red", "large", 0, 0), Shape("circle", "blue", "large", 2, 2)), "cat")
    image = render_scene(scene, size=96)
    assert image.size == (96, 96)
    assert image.getpixel((16, 12)) == (220, 40, 40)  # centre of the top-left cell (32 x 24 px cells)
    assert image.getpixel((80, 60)) == (40, 80, 220)
    band = [image.getpixel((x, y)) for x in range(96) for y in range(72, 96)]
    assert (0, 0, 0) in band  # the word is written in black in the band under the grid
    assert image.getpixel((48, 36)) == (255, 255, 255)


def test_two_shapes_in_one_cell_are_refused():
    with pytest.raises(ValueError, match="share a cell"):
        Scene("s", "k", (Shape("square", "red", "large", 0, 0), Shape("circle", "blue", "small", 0, 0)))
    with pytest.raises(ValueError, match="'pink' is not one of"):
        Scene("s", "k", (Shape("square", "pink", "large", 0, 0),))


def test_texts_name_every_shape():
    scene = Scene("s", "k", (Shape("circle", "red", "large", 0, 0), Shape("star", "blue", "small", 1, 1)), word="moon")
    assert dense_caption(scene) == (
        "A large red circle at the top left and a small blue star in the centre. The word moon is written below."
    )
    assert grid_caption(scene) == (
        "At the top left, a large red circle. At the top, no shape. At the top right, no shape. On the left, no shape. "
        "In the centre, a small blue star. On the right, no shape. At the bottom left, no shape. At the bottom, no "
        "shape. At the bottom right, no shape. The word moon is written below the shapes."
    )
    assert grid_caption(Scene("s", "k", scene.shapes[1:])).endswith(
        "In the centre, a small blue star. On the right, no shape. At the bottom left, no shape. At the bottom, no "
        "shape. At the bottom right, no shape. There is no text in the image."
    )
    three = Scene("s", "k", (*scene.shapes, Shape("star", "red", "large", 2, 0)))
    assert index_caption(three) == (
        "The circle is red. There is no square. There is no triangle. The stars are blue and red. There is no "
        "diamond. The red shapes are a circle and a star. There is no green shape. The blue shape is a star. There "
        "is no yellow shape. There is no purple shape. There is no orange shape."
    )
    assert where_caption(three) == (
        "The circle is at the top left. There is no square. There is no triangle. The stars are in the centre and at "
        "the bottom left. There is no diamond. The red shapes are at the top left and at the bottom left. There is no "
        "green shape. The blue shape is in the centre. There is no yellow shape. There is no purple shape. There is "
        "no orange shape."
    )
    assert tally_caption(three) == (
        "There are three shapes. There is one circle. There is no square. There is no triangle. There are two stars. "
        "There is no diamond. There are two red shapes. There is no green shape. There is one blue shape. There is no "
        "yellow shape. There is no purple shape. There is no orange shape."
    )
    assert captions(scene) == [
        "A red circle and a blue star with the word moon.",
        "A picture of one circle and one star with the word moon.",
    ]
    text = detailed_description(scene, random.Random(0))
    assert "large red circle" in text and "small blue star" in text and "moon" in text
    # The position phrase always identifies a shape; the kind only when it is unique.
    assert references(scene, scene.shapes[0], without="colour") == ["the circle", "the shape at the top left"]
    assert set(POSITIONS.values()) >= {s.position for s in scene.shapes}
