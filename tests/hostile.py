"""The hostile image set of issue 22, written as files, with what each entry point must make of each file.

``ok``: decodes (to its first frame, upright, RGB); ``corrupt``: an ImageError naming the file (API 400
``invalid_image``); ``too_large``: an ImageTooLargeError stating the budget (API 413 ``image_too_large``).
``header``: whether opening the header alone finds it (``mmgpt data check`` without ``--decode-images``).
:func:`image_bytes` draws more of the kind for fuzz tests (the image loader, the API).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from hypothesis import strategies as st
from PIL import Image


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    outcome: str  # ok | corrupt | too_large
    header: bool = True  # the header probe already refuses it (for outcome != ok)
    match: str = ""  # part of the problem's wording


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def corpus() -> list[Hostile]:
    """Every kind of file the issue lists; the good ones are at most 48 x 48 pixels (under any test budget)."""
    pixels = torch.randint(0, 256, (48, 48, 3), generator=torch.Generator().manual_seed(22), dtype=torch.uint8)
    noise = Image.frombytes("RGB", (48, 48), pixels.numpy().tobytes())
    jpeg, png = _encoded(noise, "JPEG", quality=90), _encoded(noise, "PNG")
    frames = [Image.new("RGB", (24, 16), colour) for colour in ("red", "green", "blue")]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned 90 degrees
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    palette.paste(1, (0, 0, 10, 20))
    return [
        Hostile("cut-header.jpg", jpeg[: len(jpeg) // 20], "corrupt", match="truncated or corrupt header"),
        Hostile("cut-half.jpg", jpeg[: len(jpeg) // 2], "corrupt", header=False, match="truncated or corrupt"),
        Hostile("cut-half.png", png[: len(png) // 2], "corrupt", header=False, match="truncated or corrupt"),
        Hostile("empty.png", b"", "corrupt", match="empty (0 bytes)"),
        Hostile("page.png", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "corrupt", match="HTML"),
        Hostile("notes.jpg", b"remember to buy milk\n" * 4, "corrupt", match="looks like text"),
        Hostile("giant.png", png_header_only(10_000, 10_000), "too_large", match="100,000,000 pixels is over"),
        Hostile("bomb.png", png_header_only(100_000, 100_000), "too_large", match="decompression bomb"),
        Hostile("animated.gif", animated.getvalue(), "ok"),
        Hostile("cmyk.jpg", _encoded(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"), "ok"),
        Hostile("sixteen.png", _encoded(Image.new("I;16", (24, 24), 40000), "PNG"), "ok"),
        Hostile("rotated.jpg", _encoded(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif), "ok"),
        Hostile("palette.png", _encoded(palette, "PNG", transparency=0), "ok"),
        Hostile("sliver.png", _encoded(Image.new("L", (1, 9000), 99), "PNG"), "ok"),  # within budget, 9000:1
    ]


def write_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for item in corpus():
        paths[item.name] = folder / item.name
        paths[item.name].write_bytes(item.data)
    return paths


BY_NAME = {item.name: item for item in corpus()}
BROKEN = [name for name, item in BY_NAME.items() if item.outcome != "ok"]
GOOD = [name for name, item in BY_NAME.items() if item.outcome == "ok"]


def small_images() -> list[bytes]:
    out = []
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "ICO"):
        buffer = io.BytesIO()
        Image.new("RGBA" if fmt == "PNG" else "RGB", (9, 7), (10, 200, 30)).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


@st.composite
def image_bytes(draw) -> bytes:
    """Random bytes, or a real small image cut short, with bytes changed, or with random bytes appended."""
    real = draw(st.sampled_from(small_images()))
    kind = draw(st.sampled_from(["random", "cut", "changed", "tail"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "cut":
        return real[: draw(st.integers(0, len(real)))]
    if kind == "tail":
        return real + draw(st.binary(max_size=64))
    data = bytearray(real)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)
