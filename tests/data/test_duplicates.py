"""Near-duplicate detection: every copy operation is found, other fields of view and distinct images are not."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from bcc_lightning.data import duplicates as dup

T = Image.Transpose


def slide(width: int, height: int, seed: int) -> Image.Image:
    """A small stained-smear-like texture: tinted background, blurred blobs of varied colour and size."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 245, 3)))
    draw = ImageDraw.Draw(canvas)
    for _ in range(width * height // 120):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(2, 7)
        colour = tuple(int(v) for v in rng.integers(40, 220, 3))
        draw.ellipse((x - r * rng.uniform(0.6, 1.4), y - r, x + r * rng.uniform(0.6, 1.4), y + r), fill=colour)
    noisy = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.8)), np.float32) + rng.normal(0, 3, (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, quality: int = 90) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def rotate(image: Image.Image, degrees: float, fill: str) -> Image.Image:
    """Rotation about the centre, corners filled like Keras' fill_mode (nearest/reflect) or with a constant."""
    if fill == "constant":
        return image.rotate(degrees, resample=Image.BICUBIC, fillcolor=(0, 0, 0))
    w, h = image.size
    pad = math.ceil((math.hypot(w, h) - min(w, h)) / 2) + 2
    padded = np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="edge" if fill == "nearest" else fill)
    return Image.fromarray(padded).rotate(degrees, resample=Image.BILINEAR).crop((pad, pad, pad + w, pad + h))


def resize(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)


def tone(image: Image.Image, brightness: float, contrast: float) -> Image.Image:
    return ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness)).enhance(contrast)


def gray(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


OPERATIONS: dict[str, tuple[Callable[[Image.Image], Image.Image], str | None]] = {
    "hflip": (lambda im: im.transpose(T.FLIP_LEFT_RIGHT), "hflip"),
    "vflip": (lambda im: im.transpose(T.FLIP_TOP_BOTTOM), "vflip"),
    "rot90": (lambda im: im.transpose(T.ROTATE_90), "rot90"),
    "rot180": (lambda im: im.transpose(T.ROTATE_180), "rot180"),
    "rot270": (lambda im: im.transpose(T.ROTATE_270), "rot270"),
    "transpose": (lambda im: im.transpose(T.TRANSPOSE), "hflip+rot90"),
    "transverse": (lambda im: im.transpose(T.TRANSVERSE), "hflip+rot270"),
    "rotate+12 nearest": (lambda im: rotate(im, 12, "nearest"), "rotate+12°"),
    "rotate-45 reflect": (lambda im: rotate(im, -45, "reflect"), None),
    "rotate+33 constant": (lambda im: rotate(im, 33, "constant"), "rotate+33°"),
    "grayscale": (gray, "grayscale"),
    "jpeg q70": (lambda im: encode(im, "JPEG", 70), "identity/re-encoded"),
    "png": (lambda im: encode(im, "PNG"), "identity/re-encoded"),
    "resize 0.5": (lambda im: resize(im, 0.5), "resize×0.50"),
    "resize 1.5": (lambda im: resize(im, 1.5), "resize×1.50"),
    "brightness/contrast": (lambda im: tone(im, 1.15, 0.85), "brightness/contrast"),
    "combination": (lambda im: encode(resize(gray(rotate(im.transpose(T.ROTATE_90), -20, "nearest")), 0.7),
                                      "JPEG", 75), None),
    "combination 2": (lambda im: encode(tone(rotate(im.transpose(T.FLIP_LEFT_RIGHT), 40, "reflect"), 0.9, 1.1),
                                        "JPEG", 80), None),
}


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return slide(260, 200, seed=1).crop((40, 30, 200, 126))  # 160x96, not square on purpose


@pytest.fixture(scope="module")
def source_set(source: Image.Image) -> dup.DescriptorSet:
    return dup.DescriptorSet.from_descriptors([dup.describe(source)], ["source"])


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_every_operation_is_detected(name: str, source: Image.Image, source_set: dup.DescriptorSet) -> None:
    operation, expected = OPERATIONS[name]
    copy = dup.DescriptorSet.from_descriptors([dup.describe(operation(source))], ["copy"])
    matches = dup.find_copies(copy, source_set)
    assert len(matches) == 1, name
    match = matches[0]
    assert (match.query_index, match.reference_index) == (0, 0)
    assert match.score >= dup.MATCH_THRESHOLD
    if expected is not None:
        assert match.transform == expected


def test_combination_is_named_best_effort(source: Image.Image, source_set: dup.DescriptorSet) -> None:
    copy = resize(gray(rotate(source.transpose(T.ROTATE_90), -20, "nearest")), 0.7)
    (match,) = dup.find_copies(dup.DescriptorSet.from_descriptors([dup.describe(copy)]), source_set)
    assert match.transform.startswith("rot90+rotate-20°")
    assert "grayscale" in match.transform and "resize×0.70" in match.transform


def test_overlapping_fields_of_view_are_not_flagged() -> None:
    big = slide(420, 240, seed=2)
    # 160x120 tiles packed so that several pairs overlap 28-45 % of their area, none 50 % or more.
    corners = [(0, 0), (88, 0), (88, 66), (200, 0), (200, 72), (260, 120)]
    tiles = [big.crop((x, y, x + 160, y + 120)) for x, y in corners]
    overlaps = [max(0, 160 - abs(xa - xb)) * max(0, 120 - abs(ya - yb)) / (160 * 120)
                for i, (xa, ya) in enumerate(corners) for xb, yb in corners[i + 1:]]
    assert max(overlaps) < 0.5 and sum(o > 0.25 for o in overlaps) >= 5
    tiles += [t.transpose(T.ROTATE_90) for t in tiles[:2]]  # a rotated neighbour is still another field of view
    data = dup.DescriptorSet.from_descriptors([dup.describe(t) for t in tiles])
    matches = dup.find_copies(data)
    assert {(m.query_index, m.reference_index) for m in matches} == {(0, 6), (1, 7)}


def test_distinct_images_are_not_flagged() -> None:
    images = [slide(120, 100, seed=10 + i) for i in range(8)]
    # Two unrelated noise fields under the same strong illumination gradient: only the gradient is shared.
    ramp = np.linspace(60, 200, 110, dtype=np.float32)[None, :, None]
    for seed in (0, 1):
        noise = np.random.default_rng(seed).normal(0, 12, (90, 110, 3))
        images.append(Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8)))
    images.append(Image.new("RGB", (64, 64), (200, 180, 210)))  # flat images carry nothing to match
    images.append(Image.new("RGB", (80, 50), (90, 90, 90)))
    data = dup.DescriptorSet.from_descriptors([dup.describe(im) for im in images])
    assert dup.find_copies(data) == []


def test_clusters_group_copies(source: Image.Image) -> None:
    other = slide(150, 150, seed=5)
    images = [source, other, source.transpose(T.ROTATE_180), gray(other), rotate(source, 25, "reflect"),
              encode(other.transpose(T.FLIP_LEFT_RIGHT), "JPEG", 75), slide(100, 140, seed=6)]
    data = dup.DescriptorSet.from_descriptors([dup.describe(im) for im in images])
    labels = dup.clusters(len(data), dup.find_copies(data))
    assert labels[0] == labels[2] == labels[4]
    assert labels[1] == labels[3] == labels[5]
    assert len({labels[0], labels[1], labels[6]}) == 3
    assert dup.clusters(5, [(0, 1), (3, 4)]) == [0, 0, 1, 2, 2]
    assert dup.clusters(0, []) == []


def test_descriptor_set_round_trip(tmp_path: Path, source: Image.Image) -> None:
    images = [source, slide(90, 70, seed=3)]
    data = dup.DescriptorSet.from_descriptors([dup.describe(im) for im in images], ["a.png", "b.jpg"],
                                              errors={"c.png": "c.png: empty file (0 bytes)"})
    path = data.save(tmp_path / "cache" / "train.npz")
    assert [p.name for p in path.parent.iterdir()] == ["train.npz"]  # nothing temporary left behind
    loaded = dup.DescriptorSet.load(path)
    assert loaded.paths == data.paths and loaded.errors == data.errors
    for name in ("vectors", "coeffs", "saturation", "sizes", "tone"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(data, name))
    assert dup.find_copies(loaded, data)[0].transform == "identity/re-encoded"


@pytest.mark.parametrize("shape", [(31, 57, 3), (57, 31, 3), (1, 1, 3), (2, 9, 3), (31, 57)])
def test_odd_sizes_do_not_crash(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    descriptor = dup.describe(array)
    assert descriptor.vector.shape == (dup.FEATURE_DIM,) and np.isfinite(descriptor.vector).all()
    assert descriptor.coeffs.shape == (dup.RINGS, dup.ORDERS) and np.isfinite(descriptor.coeffs).all()
    assert descriptor.size == shape[:2]
    assert dup.describe(Image.fromarray(array).convert("L")).saturation == 0.0


def test_describe_files_skips_unreadable(tmp_path: Path, source: Image.Image) -> None:
    paths = []
    for i in range(7):
        path = tmp_path / f"img{i}.png"
        (source if i == 0 else slide(80, 60, seed=20 + i)).save(path)
        paths.append(path)
    source.transpose(T.ROTATE_90).save(tmp_path / "copy.jpg", quality=85)
    paths.append(tmp_path / "copy.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.append(tmp_path / "broken.jpg")
    seen: list[tuple[int, int]] = []
    data = dup.describe_files(paths, workers=2, progress=lambda done, total: seen.append((done, total)))
    assert len(data) == 8 and list(data.errors) == [str(tmp_path / "broken.jpg")]
    assert seen[-1] == (9, 9)
    matches = dup.find_copies(data)
    assert [(data.paths[m.query_index], data.paths[m.reference_index], m.transform) for m in matches] == [
        (str(paths[0]), str(tmp_path / "copy.jpg"), "rot270")]
