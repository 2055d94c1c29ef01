"""The only image decoder: any microscope image file (or its bytes) -> 8-bit RGB, or a clear reason why not.

Budgets are checked on the header (Pillow's lazy open reads the size without decoding a pixel), so an image too large
to decode safely is refused before any memory is spent on it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageFile

# A truncated JPEG must be rejected, not silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# A file, or an upload's bytes.
Source = str | Path | bytes


class ImageDecodeError(ValueError):
    """The file could not be turned into an RGB image; the message says why."""


class ImageTooLargeError(ImageDecodeError):
    """The image is over a budget (read from its header, before decoding); the message names the limit."""


@dataclass(frozen=True)
class ImageBudget:
    """Limits checked on an image's header before it is decoded; None: no limit beyond Pillow's own bomb check."""

    max_pixels: int | None = None  # width x height
    max_aspect: float | None = None  # long side / short side

    def check(self, width: int, height: int, name: str) -> None:
        """Raise ImageTooLargeError naming the limit that width x height breaks."""
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise ImageTooLargeError(
                f"{name}: {width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is over the limit of "
                f"{self.max_pixels / 1e6:g} megapixels per image; downscale it first")
        if self.max_aspect is not None and max(width, height) > self.max_aspect * max(1, min(width, height)):
            raise ImageTooLargeError(
                f"{name}: {width}x{height} pixels has an aspect ratio of {_aspect(width, height):.4g}, over the limit "
                f"of {self.max_aspect:g}; crop it into tiles first")


def _aspect(width: int, height: int) -> float:
    return max(width, height) / max(1, min(width, height))


# Every reader's default. Resizing an extreme strip to the square input allocates about input side x long side (a
# 1x88,000,000 PNG asked torchvision for 33.8 GB), so such a file is refused by its header; pixels are left to
# Pillow's bomb limit (about 89 megapixels warns, which load_rgb treats as an error).
FILE_BUDGET = ImageBudget(max_aspect=100.0)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, without decoding: Pillow's format name, mode and size."""

    format: str
    mode: str
    width: int
    height: int


def _name(source: Source, name: str | None) -> str:
    return name if name is not None else ("upload" if isinstance(source, bytes) else str(source))


def _open(source: Source) -> Image.Image:
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


@contextmanager
def _reading(source: Source, label: str) -> Iterator[Image.Image]:
    """The opened image, Pillow's bomb warning raised as an error so a huge image cannot exhaust memory; any failure
    inside (opening, or what the caller does with the image) becomes ImageDecodeError or ImageTooLargeError."""
    try:
        if (len(source) if isinstance(source, bytes) else Path(source).stat().st_size) == 0:
            raise ImageDecodeError(f"{label}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(source) as image:
                yield image
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{label}: image too large to decode safely ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{label}: file not found") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad files.
        raise ImageDecodeError(f"{label}: not a readable image ({type(exc).__name__}: {exc})") from exc


def read_header(source: Source, budget: ImageBudget = FILE_BUDGET, name: str | None = None) -> ImageHeader:
    """The header of a file or of bytes, checked against `budget` and Pillow's bomb limit; nothing is decoded.
    Raises ImageDecodeError (not an image, empty) or ImageTooLargeError (over a budget) saying why."""
    label = _name(source, name)
    with _reading(source, label) as image:
        header = ImageHeader(str(image.format), image.mode, *image.size)
    if header.width < 1 or header.height < 1:
        raise ImageDecodeError(f"{label}: image has no pixels")
    budget.check(header.width, header.height, label)
    return header


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale high bit-depth or float pixels to 0..255 by the format's range, never by the image's own maximum: two
    frames of one scene must decode to the same brightness relation they had on the camera.

    16-bit modes: 0..65535. 32-bit integer mode `I` (how some readers return 16-bit PNGs): 0..65535 as well, clipped.
    Float `F`: 0..1 by convention; data beyond 1 is taken as 8-bit (<= 255) or 16-bit (<= 65535) values stored as
    floats. NaN becomes 0.
    """
    data = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "F":
        top = float(np.max(data)) if data.size else 0.0
        scale = 1.0 if top <= 1.0 else (255.0 if top <= 255.0 else 65535.0)
    else:
        scale = 65535.0
    return np.clip(data / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1) to 8-bit RGB; transparency becomes white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("RGB;16", "RGBA;16", "BGR;16"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode)[..., :3])
    return image.convert("RGB")


def load_rgb(source: Source, budget: ImageBudget = FILE_BUDGET, name: str | None = None) -> Image.Image:
    """Decode one file (or its bytes) into an 8-bit RGB PIL image, or raise ImageDecodeError saying why it cannot be
    used; ImageTooLargeError, from the header and before decoding, when it is over `budget`."""
    label = _name(source, name)
    with _reading(source, label) as image:
        budget.check(image.width, image.height, label)  # the header's size: nothing decoded yet
        image.load()
        rgb = to_rgb(image)
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError(f"{label}: image has no pixels")
    return rgb


def _plain_jpeg(source: Source) -> bool:
    """An 8-bit RGB or grey JPEG within Pillow's size limit (its header read, nothing decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(source) as header:
                return header.format == "JPEG" and header.mode in ("RGB", "L")
    except Exception:  # unreadable, too large...: load_rgb decides and says why
        return False


def load_pixels(source: Source, budget: ImageBudget = FILE_BUDGET, name: str | None = None) -> torch.Tensor:
    """load_rgb's pixels as a uint8 (3, H, W) tensor, or ImageDecodeError. Plain JPEGs decode with torchvision's
    libjpeg-turbo: the same pixels as Pillow's (tests/data/test_imageio.py checks it), about 1.3x faster, and no copy
    out of a PIL image. Anything else, or a JPEG that decoder warns about (truncated data), goes through load_rgb."""
    if not isinstance(source, bytes):
        source = Path(source)
    if _plain_jpeg(source):
        try:
            read_header(source, budget, name)  # over budget: refused here, with its reason, before decoding
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                data = (torch.frombuffer(bytearray(source), dtype=torch.uint8) if isinstance(source, bytes)
                        else torchvision.io.read_file(str(source)))
                return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
        except ImageTooLargeError:
            raise
        except Exception:  # load_rgb below rejects it with the reason, or decodes what this decoder would not
            pass
    return torch.from_numpy(np.array(load_rgb(source, budget, name), dtype=np.uint8)).permute(2, 0, 1)
