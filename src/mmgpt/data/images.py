"""Images: decode, validate, and the CLIP transform. The only module of the project that touches PIL.

``load_image`` turns a reference (a path or a PIL image) into an RGB image or raises an :class:`ImageError`
that names the file and the fix: missing, empty, not an image at all (an HTML error page saved as ``.jpg`` is the
classic), truncated or corrupt, or larger than the pixel budget (a decompression bomb decodes a few KB into
gigabytes). No other exception escapes it for a file's content, whatever the bytes (a fuzz test checks).
``probe_image`` does the cheap part only (the header: `mmgpt data check` runs it on every image by default).
Palettes, grey levels, 16-bit grey, CMYK and alpha are converted to RGB (alpha is composited
on white, as a viewer shows it); EXIF orientation is applied so a phone photo is seen upright.

``ImageTransform`` is a vision encoder's preprocessing, built from what the encoder declares
(``VisionLanguageModel.image_transform``): ``resize="crop"`` is OpenAI CLIP's (reference.md section 2: the shorter
side to ``size`` with bicubic resampling, then the centre ``size`` x ``size``), ``resize="squash"`` MiniGPT-4's and
mPLUG-Owl's (both sides to ``size``, bicubic, the aspect ratio not kept); then scale to [0, 1] and normalise with
the encoder's mean/std (CLIP's by default). Written with PIL and torch only (torchvision does not import beside this
torch); the arithmetic matches torchvision's ``Resize`` + ``CenterCrop`` on PIL images.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mmgpt.config import CLIP_MEAN, CLIP_STD
from mmgpt.data.conversation import ImageRef

CLIP_SIZE = 224
# 64 megapixels: far above any photo in the instruction sets (COCO is ~0.3 MP), far below a bomb.
DEFAULT_MAX_PIXELS = 64 * 2**20

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EXIF_ORIENTATION = 0x0112
_MAX_ASPECT = 16  # beyond this aspect ratio the crop transform resizes only what it keeps


class ImageError(ValueError):
    """An image that cannot be used. ``path`` names it (``"<in-memory image>"`` for a PIL image), ``problem`` says
    what is wrong without the path, ``fix`` what a user with access to the file can do (a server answering a
    client words its own fix: the client cannot re-download the server's files)."""

    def __init__(self, path: str, problem: str, fix: str = "") -> None:
        super().__init__(f"{path}: {problem}" + (f"; {fix}" if fix else ""))
        self.path, self.problem, self.fix = path, problem, fix


class MissingImageError(ImageError, FileNotFoundError):
    """The file does not exist (common for OCR-VQA, whose images users download themselves)."""


class ImageTooLargeError(ImageError):
    """More pixels than the budget: refused before decoding, as a decompression bomb would exhaust memory."""


class CorruptImageError(ImageError):
    """Not an image, an unknown format, a truncated or damaged file, or one that cannot be read."""


def _describe(image: ImageRef) -> str:
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else "<in-memory image>"


_TOO_LARGE_FIX = "shrink the image, or raise max_pixels if you trust the file"
_REPLACE_FIX = "replace the file (re-download or re-export it)"
_PIL_BOMB_SIZE = re.compile(r"\((\d+) pixels\)")


def _check_budget(image: Image.Image, where: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            where,
            f"{width}x{height} = {width * height:,} pixels is over the budget of {max_pixels:,} "
            "(a possible decompression bomb)",
            _TOO_LARGE_FIX,
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        # convert("L") would clip 16-bit values at 255 (nearly everything white); scale to 8 bits first.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        return image.convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not make a good picture unusable
        return 1


def _open(path: Path, where: str, max_pixels: int) -> Image.Image:
    """The opened (not yet decoded) image, its size checked against the budget; every failure an ImageError.

    PIL raises many kinds of errors on hostile files - UnidentifiedImageError, a plain OSError ("Truncated File
    Read") or SyntaxError while reading the header, DecompressionBombError past its own global limit - so
    everything except our own errors becomes a :class:`CorruptImageError` naming the file."""
    if not path.is_file():
        raise MissingImageError(where, "no such file", "check the image root of this source")
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as error:
        found = _PIL_BOMB_SIZE.search(str(error))
        size = f"{int(found.group(1)):,} pixels" if found else "its declared size"
        raise ImageTooLargeError(
            where, f"{size} is over the budget of {max_pixels:,} (a decompression bomb)", _TOO_LARGE_FIX
        ) from None
    except UnidentifiedImageError:
        with path.open("rb") as f:
            head = f.read(64)
        if not head:
            raise CorruptImageError(where, "the file is empty (0 bytes)", _REPLACE_FIX) from None
        textual = all(32 <= b < 127 or b in b"\r\n\t" for b in head)
        hint = " (it looks like text or HTML: a failed download saved under an image name?)" if textual else ""
        raise CorruptImageError(where, "not an image PIL can identify" + hint, _REPLACE_FIX) from None
    except PermissionError as error:
        raise CorruptImageError(where, f"cannot be read ({error.strerror})", "check the file's permissions") from None
    except Exception as error:
        raise CorruptImageError(
            where, f"truncated or corrupt header ({error or type(error).__name__})", _REPLACE_FIX
        ) from None
    try:
        _check_budget(opened, where, max_pixels)
    except ImageError:
        opened.close()
        raise
    return opened


def probe_image(image: ImageRef, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Open ``image``'s header only (milliseconds, no decoding): raises the :class:`ImageError` of a missing file,
    a file that is not an image, a header cut short or an image over the pixel budget. A file cut short after
    its header passes; :func:`load_image` finds it."""
    if isinstance(image, Image.Image):
        _check_budget(image, _describe(image), max_pixels)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns of broken EXIF blocks and of sizes near its own limit
        _open(Path(image), _describe(image), max_pixels).close()


def load_image(image: ImageRef, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``image`` to an upright RGB ``PIL.Image`` or raise an :class:`ImageError` subclass.

    An in-memory PIL image is checked and converted the same way; it is never modified (the result may be the
    same object when nothing needs converting). Animated images give their first frame.
    """
    where = _describe(image)
    if isinstance(image, Image.Image):
        _check_budget(image, where, max_pixels)
        if _orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"an image reference is a path or a PIL image, got {type(image).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns of broken EXIF blocks and of sizes near its own limit
        with _open(Path(image), where, max_pixels) as opened:
            try:
                opened.load()
                if _orientation(opened) != 1:
                    ImageOps.exif_transpose(opened, in_place=True)
                rgb = _to_rgb(opened)
                # The returned image must not depend on the file, which closes here.
                return rgb.copy() if rgb is opened else rgb
            except Exception as error:  # PIL's decoders raise OSError, SyntaxError, ValueError, EOFError...
                problem = f"truncated or corrupt ({error or type(error).__name__})"
                raise CorruptImageError(where, problem, _REPLACE_FIX) from None


RESIZE_MODES = ("crop", "squash")


@dataclass(frozen=True)
class ImageTransform:
    """An encoder's preprocessing: image reference -> float tensor [3, size, size] (normalised)."""

    size: int = CLIP_SIZE
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"image size must be positive, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each and std > 0, got {self.mean} and {self.std}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize={self.resize!r} is not one of {RESIZE_MODES}")
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Shorter side to ``size`` (bicubic), then the centre ``size`` x ``size`` square; RGB in and out."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.size * long / short)  # torchvision's rounding (truncation), for equal pixels
        new_size = (self.size, new_long) if width <= height else (new_long, self.size)
        if new_long > _MAX_ASPECT * self.size:
            # A sliver (1 x 16M pixels is within budget) would resize to gigapixels before the crop: resize only
            # the source box that the centre crop keeps (the same sampling positions; within 1/255 of the above).
            left = round((new_size[0] - self.size) / 2.0)
            top = round((new_size[1] - self.size) / 2.0)
            sx, sy = width / new_size[0], height / new_size[1]
            box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
            return image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BICUBIC)
        width, height = image.size
        left = round((width - self.size) / 2.0)
        top = round((height - self.size) / 2.0)  # Python rounding, as torchvision
        if (width, height) != (self.size, self.size):
            image = image.crop((left, top, left + self.size, top + self.size))
        return image

    def squash(self, image: Image.Image) -> Image.Image:
        """Both sides to ``size`` (bicubic), the aspect ratio not kept; RGB in and out."""
        square = (self.size, self.size)
        return image if image.size == square else image.resize(square, Image.Resampling.BICUBIC)

    def __call__(self, image: ImageRef) -> torch.Tensor:
        """[3, size, size] float32."""
        rgb = load_image(image, max_pixels=self.max_pixels)
        square = self.resize_and_crop(rgb) if self.resize == "crop" else self.squash(rgb)
        pixels = torch.frombuffer(bytearray(square.tobytes()), dtype=torch.uint8)
        tensor = pixels.view(self.size, self.size, 3).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return tensor.sub_(mean).div_(std)
