from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcc_lightning.data.imageio import (
    FILE_BUDGET,
    ImageBudget,
    ImageDecodeError,
    ImageTooLargeError,
    load_pixels,
    load_rgb,
    read_header,
)
from bcc_lightning.data.layout import is_image_file
from tests.conftest import write_image
from tests.serving import png_of_zeros


@pytest.mark.parametrize(
    ("mode", "fmt", "ext"),
    [("RGB", "JPEG", "jpg"), ("L", "PNG", "png"), ("LA", "PNG", "png"), ("P", "PNG", "png"), ("RGBA", "PNG", "png"),
     ("CMYK", "JPEG", "jpg"), ("CMYK", "TIFF", "tif"), ("I;16", "PNG", "png"), ("I;16", "TIFF", "tiff"),
     ("F", "TIFF", "tif"), ("1", "BMP", "bmp"), ("RGB", "BMP", "bmp")],
)
def test_every_mode_becomes_8bit_rgb(tmp_path: Path, mode: str, fmt: str, ext: str) -> None:
    path = write_image(tmp_path / f"x.{ext}", mode=mode, fmt=fmt)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.size == (40, 30)
    assert np.asarray(image).dtype == np.uint8


def test_16bit_scaled_by_bit_depth_not_by_each_image(tmp_path: Path) -> None:
    scene = np.tile(np.linspace(0, 4000, 40), (30, 1))
    Image.fromarray(scene.astype(np.uint16)).save(tmp_path / "dim.tif")  # one frame, and the same scene 16x brighter
    Image.fromarray((scene * 16).astype(np.uint16)).save(tmp_path / "bright.png")
    dim = np.asarray(load_rgb(tmp_path / "dim.tif"))[..., 0].astype(float)
    bright = np.asarray(load_rgb(tmp_path / "bright.png"))[..., 0].astype(float)
    assert dim.max() == round(4000 / 65535 * 255) and bright.max() == round(64000 / 65535 * 255)
    assert np.allclose(bright[:, 5:], 16 * dim[:, 5:], rtol=0.1, atol=8)  # their relation survives decoding


def test_float_images_use_the_unit_range(tmp_path: Path) -> None:
    Image.fromarray(np.full((10, 10), 0.5, dtype=np.float32)).save(tmp_path / "half.tif")
    assert np.asarray(load_rgb(tmp_path / "half.tif")).max() == 128  # [0, 1] floats: not black


def test_transparency_becomes_white(tmp_path: Path) -> None:
    Image.new("RGBA", (5, 5), (10, 20, 30, 0)).save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png")).min() == 255


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_bad_files_raise_decode_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        load_rgb(path)


def test_truncated_png_is_rejected(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.png", size=(200, 200))
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError):
        load_rgb(tmp_path / "cut.png")


def test_decompression_bomb_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_image(tmp_path / "big.png", size=(300, 300))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_rgb(path)


def _scene(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 120 + 70 * np.sin(x / 9.0)[..., None] * np.cos(y / 6.0)[..., None]
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("options", [
    {"quality": 90}, {"quality": 75, "subsampling": 0}, {"quality": 95, "subsampling": 1}, {"progressive": True},
    {"quality": 60, "optimize": True}, {"grey": True}, {"cmyk": True}, {"exif_rotated": True}])
def test_load_pixels_matches_pillow_exactly(tmp_path: Path, options: dict) -> None:
    """The fast JPEG decoder (torchvision's libjpeg-turbo) gives Pillow's pixels bit for bit, at odd sizes, every
    chroma subsampling, progressive, grey (as RGB), CMYK (through Pillow) and an EXIF rotation (ignored by both)."""
    options = dict(options)
    image = _scene(333, 217)
    if options.pop("grey", False):
        image = image.convert("L")
    if options.pop("cmyk", False):
        image = image.convert("CMYK")
    if options.pop("exif_rotated", False):
        exif = Image.Exif()
        exif[0x0112] = 6
        options["exif"] = exif.tobytes()
    path = tmp_path / "x.jpg"
    image.save(path, "JPEG", **options)
    pixels = load_pixels(path)
    assert pixels.dtype.is_floating_point is False and pixels.shape == (3, 217, 333)
    assert np.array_equal(pixels.permute(1, 2, 0).numpy(), np.asarray(load_rgb(path)))


def test_load_pixels_takes_every_mode_through_pillow(tmp_path: Path) -> None:
    path = write_image(tmp_path / "x.png", mode="I;16", size=(40, 30))
    assert np.array_equal(load_pixels(path).permute(1, 2, 0).numpy(), np.asarray(load_rgb(path)))


def test_truncated_jpeg_is_rejected_by_both_decoders(tmp_path: Path) -> None:
    _scene(300, 200).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for decode in (load_rgb, load_pixels):
        with pytest.raises(ImageDecodeError, match="cut.jpg"):
            decode(tmp_path / "cut.jpg")


def test_load_pixels_keeps_the_bomb_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _scene(300, 300).save(tmp_path / "big.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_pixels(tmp_path / "big.jpg")


def test_is_image_file() -> None:
    assert is_image_file(Path("a/B/x.TIF")) and is_image_file(Path("x.jpeg"))
    assert not is_image_file(Path("x.txt")) and not is_image_file(Path(".x.png"))


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Small files, huge pictures: what a hostile upload looks like."""
    return {"square.png": png_of_zeros(9400, 9400), "strip.png": png_of_zeros(1, 88_000_000)}


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Image.Image) -> None:
        raise AssertionError("decoded although its header was over the budget")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr("torchvision.io.decode_jpeg", refuse)


def test_budgets_refuse_from_the_header_before_decoding(bombs: dict[str, bytes], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    square = read_header(bombs["square.png"], ImageBudget())
    assert (square.mode, square.width, square.height) == ("L", 9400, 9400)
    header = read_header(bombs["strip.png"], ImageBudget(), "strip.png")
    assert (header.format, header.width, header.height) == ("PNG", 1, 88_000_000)
    budget = ImageBudget(max_pixels=40_000_000, max_aspect=20)
    (tmp_path / "square.png").write_bytes(bombs["square.png"])
    _no_decoding(monkeypatch)
    for source in (bombs["square.png"], tmp_path / "square.png"):  # bytes and files alike
        for decode in (read_header, load_rgb, load_pixels):
            with pytest.raises(ImageTooLargeError, match="over the limit of 40 megapixels"):
                decode(source, budget, "square.png")
    with pytest.raises(ImageTooLargeError, match="aspect ratio of 8.8e\\+07, over the limit of 20"):
        read_header(bombs["strip.png"], ImageBudget(max_aspect=20), "strip.png")
    # Every reader's default refuses the strip (its resize would ask for tens of GB), with the file's name.
    (tmp_path / "strip.png").write_bytes(bombs["strip.png"])
    with pytest.raises(ImageTooLargeError, match="strip.png: .*aspect ratio"):
        load_pixels(tmp_path / "strip.png")
    assert FILE_BUDGET.max_pixels is None  # pixels: Pillow's own bomb limit, as before


def test_an_image_within_the_budget_decodes_from_bytes_as_from_its_file(tmp_path: Path) -> None:
    _scene(120, 80).save(tmp_path / "x.jpg", quality=90)
    path = write_image(tmp_path / "x.png", mode="RGBA", size=(50, 20))
    budget = ImageBudget(max_pixels=120 * 80, max_aspect=2.5)
    for file in (tmp_path / "x.jpg", path):
        assert np.array_equal(load_pixels(file.read_bytes(), budget).numpy(), load_pixels(file).numpy())
        assert np.array_equal(np.asarray(load_rgb(file.read_bytes(), budget)), np.asarray(load_rgb(file)))
    with pytest.raises(ImageTooLargeError, match="over the limit of 2"):
        load_rgb(path, ImageBudget(max_aspect=2))


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"plain text", "not a readable image")])
def test_bad_bytes_say_why_under_their_name(content: bytes, message: str) -> None:
    for decode in (read_header, load_rgb, load_pixels):
        with pytest.raises(ImageDecodeError, match=f"notes.txt: {message}"):
            decode(content, ImageBudget(), "notes.txt")
