"""Image decoding: modes, EXIF orientation, refused files, and the CLIP transform."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from PIL import Image

from mmgpt.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    ImageTransform,
    MissingImageError,
    load_image,
    probe_image,
)
from tests.hostile import image_bytes


def saved(tmp_path: Path, image: Image.Image, name: str, **kwargs) -> Path:
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    ("mode", "value", "name", "expected"),
    [
        ("L", 128, "grey.png", (128, 128, 128)),
        ("LA", (100, 255), "grey_alpha.png", (100, 100, 100)),
        ("LA", (100, 0), "grey_transparent.png", (255, 255, 255)),  # transparent shows as white
        ("RGBA", (10, 20, 30, 255), "rgba.png", (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), "rgba_transparent.png", (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), "cmyk.tiff", (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), "cmyk_red.tiff", (255, 0, 0)),
        ("I;16", 65535, "sixteen.png", (255, 255, 255)),
        ("I;16", 32768, "sixteen_half.png", (128, 128, 128)),  # scaled, not clipped to white
        ("1", 1, "bilevel.png", (255, 255, 255)),
    ],
)
def test_modes_become_rgb(tmp_path, mode, value, name, expected):
    path = saved(tmp_path, Image.new(mode, (4, 3), value), name)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (4, 3)
    assert image.getpixel((1, 1)) == expected


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    assert load_image(saved(tmp_path, palette, "p.png")).getpixel((0, 0)) == (0, 0, 255)
    assert load_image(saved(tmp_path, palette, "p.gif", transparency=0)).getpixel((0, 0)) == (255, 255, 255)


def test_in_memory_image_is_converted_and_left_untouched():
    original = Image.new("RGBA", (5, 5), (1, 2, 3, 255))
    image = load_image(original)
    assert image.mode == "RGB" and original.mode == "RGBA"
    rgb = Image.new("RGB", (5, 5))
    assert load_image(rgb) is rgb


def test_exif_orientation_is_applied(tmp_path):
    # 4 wide x 2 high: left half red, right half blue; orientation 6 = the camera was turned 90 degrees.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = load_image(saved(tmp_path, image, "rotated.jpg", exif=exif, quality=95))
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # red now on top (rotated 90 degrees clockwise)
    assert bottom[2] > 200 and bottom[0] < 60


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))  # 10 gigapixels: past PIL's own hard limit too
    with pytest.raises(ImageTooLargeError, match=r"bomb"):
        load_image(bomb)
    medium = tmp_path / "medium.png"
    medium.write_bytes(png_header_only(10_000, 10_000))  # 100 MP: over our 64 MP budget, under PIL's limit
    with pytest.raises(ImageTooLargeError, match=r"10000x10000 = 100,000,000 pixels is over the budget"):
        load_image(medium)
    small = saved(tmp_path, Image.new("RGB", (100, 100)), "small.png")
    with pytest.raises(ImageTooLargeError, match="raise max_pixels"):
        load_image(small, max_pixels=5_000)
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5_000)


@pytest.mark.parametrize("name", ["cut.jpg", "cut.png"])
def test_truncated_file_is_refused(tmp_path, name):
    noisy = Image.effect_noise((64, 64), 50).convert("RGB")
    path = saved(tmp_path, noisy, name)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptImageError, match="truncated or corrupt"):
        load_image(path)


def test_text_file_named_jpg_is_refused(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html><body>404 Not Found</body></html>\n")
    with pytest.raises(CorruptImageError, match="looks like text or HTML"):
        load_image(fake)


def test_missing_file(tmp_path):
    with pytest.raises(MissingImageError, match="no such file") as caught:
        load_image(tmp_path / "nope.jpg")
    assert isinstance(caught.value, FileNotFoundError) and caught.value.path.endswith("nope.jpg")


def test_clip_transform_normalises_with_clip_constants():
    transform = ImageTransform()
    out = transform(Image.new("RGB", (300, 250), (255, 128, 0)))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    for channel, value in enumerate((255, 128, 0)):
        expected = (value / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert torch.allclose(out[channel], torch.full((224, 224), expected), atol=1e-5)


def test_clip_transform_resizes_the_shorter_side_and_crops_the_centre():
    # 3 vertical bands, 300 x 100: the centre crop of the 672 x 224 resize (x 224..448) lies in the green band
    # (x 80..220 -> 179..493), away from the bicubic blend at its edges.
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (80, 0, 220, 100))
    image.paste((0, 0, 255), (220, 0, 300, 100))
    transform = ImageTransform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert transform.resize_and_crop(image).size == (224, 224)
    out = transform(image)
    assert torch.allclose(out[1], torch.ones(224, 224), atol=1 / 255)
    assert out[0].abs().max() < 2 / 255 and out[2].abs().max() < 2 / 255
    # torchvision's arithmetic: 224 x int(224 * 300 / 100) = 672 before the crop.
    tall = ImageTransform(size=10).resize_and_crop(Image.new("RGB", (30, 77)))
    assert tall.size == (10, 10)


def test_clip_transform_matches_a_reference_computation(tmp_path):
    image = Image.effect_noise((320, 240), 64).convert("RGB")
    ref = image.resize((298, 224), Image.Resampling.BICUBIC).crop((37, 0, 261, 224))
    pixels = torch.tensor(list(ref.tobytes()), dtype=torch.float32).view(224, 224, 3).permute(2, 0, 1) / 255
    expected = (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(ImageTransform()(saved(tmp_path, image, "noise.png")), expected, atol=1e-6)


def test_transform_rejects_bad_parameters():
    with pytest.raises(ValueError, match="positive"):
        ImageTransform(size=0)
    with pytest.raises(ValueError, match="std > 0"):
        ImageTransform(std=(0.0, 1.0, 1.0))


def test_errors_carry_the_problem_and_the_fix_apart_from_the_path(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError) as caught:
        load_image(empty)
    error = caught.value
    assert (error.path, error.problem) == (str(empty), "the file is empty (0 bytes)")
    assert str(error) == f"{empty}: the file is empty (0 bytes); {error.fix}" and "replace the file" in error.fix


def test_a_sliver_is_cropped_without_resizing_it_to_gigapixels():
    # 1 x 20,000 is within any budget, but its shorter side to 224 would be 224 x 4,480,000 before the crop.
    sliver = Image.new("RGB", (1, 20_000), (0, 200, 0))
    out = ImageTransform(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(sliver)
    assert out.shape == (3, 224, 224) and torch.allclose(out[1], torch.full((224, 224), 200 / 255), atol=1 / 255)


def test_the_probe_reads_the_header_only(tmp_path):
    noisy = saved(tmp_path, Image.effect_noise((64, 64), 50).convert("RGB"), "cut.png")
    noisy.write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    probe_image(noisy)  # the header is whole: only decoding finds the cut
    with pytest.raises(CorruptImageError):
        load_image(noisy)
    with pytest.raises(ImageTooLargeError, match="over the budget of 100"):
        probe_image(noisy, max_pixels=100)
    with pytest.raises(MissingImageError):
        probe_image(tmp_path / "nope.png")


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(image_bytes())
def test_any_bytes_give_an_rgb_image_or_an_image_error_naming_the_file(tmp_path, data):
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    for check in (probe_image, load_image):
        try:
            image = check(path, max_pixels=2**20)
        except ImageError as error:
            assert error.path == str(path) and error.problem and str(error).startswith(f"{path}: ")
        else:
            assert image is None or image.mode == "RGB"
