"""The only image decoder: any microscope image file -> 8-bit RGB, or a clear reason why not."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageFile

# A truncated JPEG must be rejected, not silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """The file could not be turned into an RGB image; the message says why."""


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


def load_rgb(path: str | Path) -> Image.Image:
    """Decode one file into an 8-bit RGB PIL image, or raise ImageDecodeError saying why it cannot be used."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            # Pillow warns before its bomb limit; treat both as errors so a huge image cannot exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                rgb = to_rgb(image)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{path}: image too large to decode safely ({exc})") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"{path}: file not found") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for bad files.
        raise ImageDecodeError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError(f"{path}: image has no pixels")
    return rgb


def _plain_jpeg(path: Path) -> bool:
    """An 8-bit RGB or grey JPEG within Pillow's size limit (its header read, nothing decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as header:
                return header.format == "JPEG" and header.mode in ("RGB", "L")
    except Exception:  # unreadable, too large...: load_rgb decides and says why
        return False


def load_pixels(path: str | Path) -> torch.Tensor:
    """load_rgb's pixels as a uint8 (3, H, W) tensor, or ImageDecodeError. Plain JPEGs decode with torchvision's
    libjpeg-turbo: the same pixels as Pillow's (tests/data/test_imageio.py checks it), about 1.3x faster, and no copy
    out of a PIL image. Anything else, or a JPEG that decoder warns about (truncated data), goes through load_rgb."""
    path = Path(path)
    if _plain_jpeg(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                data = torchvision.io.read_file(str(path))
                return torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
        except Exception:  # load_rgb below rejects it with the reason, or decodes what this decoder would not
            pass
    return torch.from_numpy(np.array(load_rgb(path), dtype=np.uint8)).permute(2, 0, 1)
