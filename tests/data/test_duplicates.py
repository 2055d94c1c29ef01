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


# ----------------------------------------------------------------------------------------------- geometric copies
def affine(image: Image.Image, linear: np.ndarray, shift: tuple[float, float] = (0.0, 0.0),
           fill: str = "nearest") -> Image.Image:
    """Keras-style warp about the centre: output pixel p shows input pixel linear @ (p - c) + c + shift * size."""
    import cv2

    w, h = image.size
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    inverse = np.hstack([linear, (centre - linear @ centre + np.array(shift) * (w, h))[:, None]])
    border = {"nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT, "constant": cv2.BORDER_CONSTANT}[fill]
    return Image.fromarray(cv2.warpAffine(np.asarray(image), inverse, (w, h), flags=cv2.INTER_LINEAR |
                                          cv2.WARP_INVERSE_MAP, borderMode=border))


def keras(image: Image.Image, fill: str, flip: bool) -> Image.Image:
    """One draw of ImageDataGenerator(rotation 20, shifts 0.1, zoom 0.2, shear 0.2 rad, horizontal_flip)."""
    a, s = math.radians(-17), 0.2
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    linear = rot @ np.array([[1, -math.sin(s)], [0, math.cos(s)]]) @ np.diag([0.85, 1.15])
    out = affine(image, linear, (0.08, -0.06), fill)
    return out.transpose(T.FLIP_LEFT_RIGHT) if flip else out


def crop(image: Image.Image, area: float, at: tuple[float, float], resize_back: bool) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * math.sqrt(area)), round(h * math.sqrt(area))
    x, y = round(at[0] * (w - cw)), round(at[1] * (h - ch))
    out = image.crop((x, y, x + cw, y + ch))
    return out.resize((w, h), Image.BICUBIC) if resize_back else out


def shear(degrees: float) -> np.ndarray:
    return np.array([[1.0, -math.sin(math.radians(degrees))], [0.0, math.cos(math.radians(degrees))]])


# name: (copy maker, expected scale, expected overlap of the copy, of the source). The Keras draw's overlap is the
# share of its output pixels that sample inside the source (its linear part has determinant ~1).
GEOMETRIC: dict[str, tuple[Callable[[Image.Image], Image.Image], float, float, float]] = {
    "shift 10 %": (lambda im: affine(im, np.eye(2), (0.1, 0.0)), 1.0, 0.9, 0.9),
    "shift 25 %": (lambda im: affine(im, np.eye(2), (-0.15, 0.2)), 1.0, 0.68, 0.68),
    "zoom 0.5": (lambda im: affine(im, np.eye(2) * 2.0), 0.5, 0.25, 1.0),
    "zoom 2 (crop of 25 %)": (lambda im: affine(im, np.eye(2) * 0.5), 2.0, 1.0, 0.25),
    "anisotropic zoom": (lambda im: affine(im, np.diag([0.8, 1.25])), 1.0, 0.8, 0.8),
    "crop 80 %, resized back": (lambda im: crop(im, 0.8, (0.3, 0.7), True), 1.12, 1.0, 0.8),
    "crop 25 %, as cut": (lambda im: crop(im, 0.25, (0.9, 0.2), False), 1.0, 1.0, 0.25),
    "shear 20°": (lambda im: affine(im, shear(20)), 1.0, 0.94, 0.94),
    "keras, nearest, flipped": (lambda im: keras(im, "nearest", True), 1.0, 0.84, 0.84),
    "keras, reflect": (lambda im: keras(im, "reflect", False), 1.0, 0.84, 0.84),
    "keras, constant, flipped": (lambda im: keras(im, "constant", True), 1.0, 0.84, 0.84),
}


@pytest.fixture(scope="module")
def field_of_view() -> Image.Image:
    return slide(420, 300, seed=31)


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometric_copies_are_found(name: str, field_of_view: Image.Image) -> None:
    make, scale, overlap_copy, overlap_source = GEOMETRIC[name]
    data = dup.DescriptorSet.from_descriptors([dup.describe(make(field_of_view)), dup.describe(field_of_view)])
    (match,) = dup.find_copies(data.subset([0]), data.subset([1]))
    assert match.method == "affine" or name.startswith("zoom 0.5"), match
    if match.method == "affine":
        assert match.geometry["scale"] == pytest.approx(scale, rel=0.06), match
        assert match.overlap_query == pytest.approx(overlap_copy, abs=0.1), match
        assert match.overlap_reference == pytest.approx(overlap_source, abs=0.1), match
        assert match.kind == ("copy" if max(overlap_copy, overlap_source) >= 0.9 else "overlap")
        assert bool(match.geometry["mirrored"]) == ("flipped" in name)
    if name.startswith("shear"):
        assert "shear" in match.transform and 15 <= abs(match.geometry["shear"]) <= 25, match


def test_overlapping_tiles_match_adjacent_tiles_do_not() -> None:
    big = slide(900, 300, seed=32)
    # Tiles of 300x300: b overlaps a by 60 %, c touches b's right edge, d sits beyond; other slides look alike.
    corners = {"a": 0, "b": 120, "c": 420, "d": 600}
    tiles = [big.crop((x, 0, x + 300, 300)) for x in corners.values()]
    tiles += [slide(300, 300, seed=40 + i) for i in range(3)]
    data = dup.DescriptorSet.from_descriptors([dup.describe(t) for t in tiles])
    matches = dup.find_copies(data)
    assert [(m.query_index, m.reference_index) for m in matches] == [(0, 1)]
    (match,) = matches
    assert match.kind == "overlap" and match.overlap == pytest.approx(0.6, abs=0.05)
    assert match.geometry["shift_x"] == pytest.approx(0.4, abs=0.03)  # b's centre lies 120 px right of a's
    # Raising min_overlap above the shared area drops the pair.
    assert dup.find_copies(data, min_overlap=0.7) == []


def test_blank_images_are_never_matched() -> None:
    rng = np.random.default_rng(0)
    background = np.clip(rng.normal(232, 2.0, (240, 320, 3)), 0, 255).astype(np.uint8)
    pen = Image.fromarray(background.copy())
    ImageDraw.Draw(pen).line([(20, 200), (140, 60), (300, 40)], fill=(30, 60, 150), width=6)
    blanks = [Image.fromarray(background), Image.fromarray(background).transpose(T.ROTATE_180), pen,
              pen.transpose(T.FLIP_LEFT_RIGHT), Image.new("RGB", (200, 150), (255, 255, 255))]
    tissue = slide(320, 240, seed=33)
    data = dup.DescriptorSet.from_descriptors([dup.describe(im) for im in [*blanks, tissue, tissue.rotate(90)]])
    assert data.blank.tolist() == [True] * 5 + [False, False]
    assert [(m.query_index, m.reference_index) for m in dup.find_copies(data)] == [(5, 6)]


def test_local_features_survive_the_cache_round_trip(tmp_path: Path, field_of_view: Image.Image) -> None:
    data = dup.DescriptorSet.from_descriptors([dup.describe(field_of_view), dup.describe(slide(200, 160, seed=4))])
    loaded = dup.DescriptorSet.load(data.save(tmp_path / "set.npz"))
    for name in ("kp_offsets", "kp_xy", "kp_desc", "kp_desc_mirror", "texture"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(data, name))
    both = dup.DescriptorSet.concat([loaded, data])
    assert both.local(2).desc.tobytes() == data.local(0).desc.tobytes()
    assert both.subset([3]).local(0).xy.tolist() == data.local(1).xy.tolist()
    shifted = dup.DescriptorSet.from_descriptors([dup.describe(affine(field_of_view, np.eye(2), (0.2, 0.1)))])
    assert len(dup.find_copies(shifted, loaded)) == 1
