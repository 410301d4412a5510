"""Scene -> image. Flat colours on white, no anti-aliasing, and PIL's built-in bitmap font (no font files), so the
same scene gives the same pixels - and the same PNG bytes - everywhere.

Layout (at the default 96 px): the top three quarters are the 3 x 3 grid of shapes (cells of 32 x 24 px); the
bottom quarter is the word band, where the word is written in black at twice the font's size. The band is there
even without a word, so every image has the same geometry.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mmgpt.world.config import IMAGE_SIZE
from mmgpt.world.scene import COLOURS, GRID, Scene, Shape

MIN_IMAGE_SIZE = 48
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
# Extent of a shape as a share of the smaller side of its cell.
EXTENT = {"small": 0.55, "large": 0.85}


def _layout(size: int) -> tuple[float, float, int]:
    """(cell width, cell height, height of the word band) for a square image of ``size`` pixels."""
    band = size // 4
    return size / GRID, (size - band) / GRID, band


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if kind == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"no polygon for shape {kind!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, size: int) -> None:
    cell_w, cell_h, _ = _layout(size)
    scale = size / IMAGE_SIZE
    cx = (shape.column + 0.5) * cell_w + shape.dx * scale
    cy = (shape.row + 0.5) * cell_h + shape.dy * scale
    r = EXTENT[shape.size] * min(cell_w, cell_h) / 2
    fill = COLOURS[shape.colour]
    box = (round(cx - r), round(cy - r), round(cx + r), round(cy + r))
    if shape.kind == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(round(x), round(y)) for x, y in _polygon(shape.kind, cx, cy, r)], fill=fill)


def _draw_word(image: Image.Image, word: str) -> None:
    size = image.width
    _, _, band = _layout(size)
    font = ImageFont.load_default_imagefont()  # the bitmap font: same glyphs whatever FreeType is installed
    left, top, right, bottom = font.getbbox(word)
    text = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(text).text((-left, -top), word, fill=255, font=font)
    zoom = max(1, min(band // text.height, (size - 4) // text.width))
    text = text.resize((text.width * zoom, text.height * zoom), Image.Resampling.NEAREST)
    x = (size - text.width) // 2
    y = size - band + (band - text.height) // 2
    image.paste(INK, (x, y, x + text.width, y + text.height), mask=text)


def render_scene(scene: Scene, *, size: int = IMAGE_SIZE) -> Image.Image:
    """The RGB image of ``scene``, ``size`` x ``size`` pixels."""
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {size} px is too small to draw shapes and a word; use {MIN_IMAGE_SIZE} or more")
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        _draw_shape(draw, shape, size)
    if scene.word:
        _draw_word(image, scene.word)
    return image


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes without metadata (no timestamps): equal images give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def save_scene(scene: Scene, path: Path, *, size: int = IMAGE_SIZE, format: str = "PNG") -> Path:
    """Write the scene's image as PNG, or as the JPEG (quality 95, no chroma subsampling) the VQA layout needs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = render_scene(scene, size=size)
    if format == "PNG":
        path.write_bytes(png_bytes(image))
    else:
        image.save(path, format="JPEG", quality=95, subsampling=0)
    return path
