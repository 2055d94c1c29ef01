"""One resize per checkpoint: the tensor kernel for new runs, Pillow's for checkpoints that predate the choice, and
the same pixels from every path that reads a file (training stream, cache, evaluation, predict, serving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.imageio import load_rgb
from bcc_lightning.data.preprocess import Preprocess, to_pixels
from bcc_lightning.prediction.folder import ImageFiles
from bcc_lightning.serving.api import decode_upload
from tests.conftest import write_image

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def microscope_like(seed: int = 0) -> Image.Image:
    """Smooth structure plus noise at a microscope export's size: a resize has real work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:230, 0:350]
    base = 128 + 60 * np.sin(x / 7.0 + seed)[..., None] * np.cos(y / 5.0)[..., None]
    pixels = np.clip(base + rng.normal(0, 25, (230, 350, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_tensor_resize_is_within_one_level_of_pillows(interpolation: str) -> None:
    image = microscope_like()
    new = to_pixels(image, Preprocess(64, MEAN, STD, interpolation))
    pil = to_pixels(image, Preprocess(64, MEAN, STD, interpolation, resize="pil"))
    difference = (new.int() - pil.int()).abs()
    assert new.dtype == torch.uint8 and new.shape == (3, 64, 64)
    assert int(difference.max()) <= 1 and float(difference.float().mean()) < 0.05


def test_checkpoints_without_the_field_keep_pillows_resize() -> None:
    """A checkpoint written before `resize` was recorded decodes exactly as it was trained."""
    old = Preprocess.from_dict({"img_size": 48, "mean": list(MEAN), "std": list(STD), "interpolation": "bilinear"})
    assert old.resize == "pil" and Preprocess(48, MEAN, STD).resize == "tensor"
    image = microscope_like(1)
    expected = v2.functional.pil_to_tensor(image.resize((48, 48), Image.BILINEAR, reducing_gap=None))
    assert torch.equal(to_pixels(image, old), expected)
    assert Preprocess.from_dict(Preprocess(48, MEAN, STD).to_dict()).resize == "tensor"  # round trip
    assert old.fingerprint() != Preprocess(48, MEAN, STD).fingerprint()  # the cache keys on it


def test_nearest_resizes_in_pillow_even_for_new_runs() -> None:
    image = microscope_like(2)
    new, pil = Preprocess(32, MEAN, STD, "nearest"), Preprocess(32, MEAN, STD, "nearest", resize="pil")
    assert torch.equal(to_pixels(image, new), to_pixels(image, pil))


@pytest.mark.parametrize("resize", ["tensor", "pil"])
def test_every_path_gives_the_same_pixels(tmp_path: Path, resize: str) -> None:
    """JPEG, PNG, TIFF, RGBA, 16-bit, grayscale and CMYK files: the training stream, the decoded-image cache (built
    by workers), evaluation's loader, predict's reader and an upload to the server give identical uint8 pixels."""
    root = tmp_path / "data"
    files = []
    for split in ("train", "val", "test"):
        for label, name in enumerate("BM"):
            image = microscope_like(label + 10 * len(split))
            folder = root / split / name
            folder.mkdir(parents=True)
            image.save(folder / "a.jpg", quality=90)
            image.convert("RGBA").save(folder / "b.png")
            image.convert("CMYK").save(folder / "c.jpg")
            image.convert("L").save(folder / "d.tif")
            files += [folder / n for n in ("a.jpg", "b.png", "c.jpg", "d.tif")]
    write_image(root / "test" / "B" / "e.png", mode="I;16", size=(120, 90))
    files.append(root / "test" / "B" / "e.png")
    pre = Preprocess(40, MEAN, STD, resize=resize)

    def by_path(dm: BCCDataModule, split: str) -> dict[Path, torch.Tensor]:
        dataset = dm.dataset(split)
        return {path: dataset[i][0] for i, (path, _) in enumerate(dataset.samples)}

    stream = BCCDataModule(root, pre, batch_size=2, num_workers=0, cache=None)
    cached = BCCDataModule(root, pre, batch_size=2, num_workers=2, cache=str(tmp_path / "cache"))
    for split in ("val", "test"):  # no augmentation outside train
        streamed, from_cache = by_path(stream, split), by_path(cached, split)
        assert streamed.keys() == from_cache.keys()
        for path, pixels in streamed.items():
            assert torch.equal(pixels, from_cache[path]), path
            assert torch.equal(pixels, to_pixels(load_rgb(path), pre)), path  # evaluation's CAM/grid reader
            assert torch.equal(pixels, ImageFiles([path], pre)[0][0]), path  # bcc-predict
            assert torch.equal(pixels, to_pixels(decode_upload(path.read_bytes()), pre)), path  # bcc-serve

