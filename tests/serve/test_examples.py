"""The browser demo's example picture is a scene of the generated world, which the tuned tiny model knows."""

from __future__ import annotations

from PIL import Image

from mmgpt.serve.web import EXAMPLE_SCENE, example_images
from mmgpt.world.render import render_scene
from mmgpt.world.scene import sample_scene


def test_the_example_image_is_the_world_scene(tmp_path):
    [path] = example_images(tmp_path)
    scene = sample_scene(EXAMPLE_SCENE, id="example")
    assert len(scene.shapes) == 3 and scene.word == "moon"
    assert Image.open(path).convert("RGB").tobytes() == render_scene(scene).tobytes()
