"""The geometric warps of data/augment.py (Keras-style shift, zoom, shear, crop and the ImageDataGenerator draw)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from bcc_lightning.data.augment import AugmentConfig, KerasAugment, augment, warp
from bcc_lightning.data.prepare.settings import WARPS, PrepareSettings
from bcc_lightning.utils.errors import UserError

OFF = {"rot90": False, "hflip": 0.0, "vflip": 0.0}  # geometric ops alone
WARP_CONFIGS = {"shift": AugmentConfig(**OFF, shift=0.25), "zoom": AugmentConfig(**OFF, zoom=(0.5, 2.0)),
                "anisotropic zoom": AugmentConfig(**OFF, zoom=(0.5, 2.0), anisotropic_zoom=True),
                "shear": AugmentConfig(**OFF, shear=20), "crop": AugmentConfig(**OFF, crop_area=(0.25, 0.8)),
                "keras": AugmentConfig(**OFF, keras=KerasAugment(), fill_mode="reflect")}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small images: torch's intra-op pool only adds contention on a shared machine (prepare's copies do the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


@pytest.mark.parametrize("fill", ["nearest", "reflect", "constant"])
def test_warp_matches_opencv(fill: str) -> None:
    """The same output-to-input map through OpenCV's warpAffine (Keras' fill modes as its border modes)."""
    import cv2

    image = _image()
    h, w = image.shape[-2:]
    linear, shift = np.array([[0.8, -0.3], [0.15, 1.2]]), np.array([5.0, -3.0])
    inverse = np.eye(3)
    inverse[:2, :2], inverse[:2, 2] = linear, shift
    centre = np.array([w / 2 - 0.5, h / 2 - 0.5])  # pixel centres about the image centre, as warp takes them
    opencv = np.hstack([linear, (centre - linear @ centre + shift)[:, None]])
    border = {"nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT, "constant": cv2.BORDER_CONSTANT}[fill]
    expected = cv2.warpAffine(image.permute(1, 2, 0).numpy(), opencv, (w, h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)
    ours = warp(image, torch.from_numpy(inverse), fill).permute(1, 2, 0).numpy()
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    assert torch.equal(warp(image, torch.eye(3, dtype=torch.float64)), image)


@pytest.mark.parametrize("name", list(WARP_CONFIGS))
def test_each_warp_is_seeded_and_named(name: str) -> None:
    cfg, image = WARP_CONFIGS[name], _image()

    def draw(seed: int) -> tuple[torch.Tensor, list[str]]:
        applied: list[str] = []
        return augment(image, cfg, torch.Generator().manual_seed(seed), applied), applied

    (a, names_a), (b, names_b), (c, _) = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and names_a == names_b and not torch.equal(a, c)
    assert a.shape == image.shape and a.dtype == torch.uint8
    assert names_a[0].startswith(name.split()[-1]), names_a
    if name == "anisotropic zoom":
        assert re.fullmatch(r"zoom×[\d.]+×[\d.]+", names_a[0])


def test_shift_moves_the_content_by_the_named_amount() -> None:
    image = torch.full((3, 60, 80), 200, dtype=torch.uint8)
    applied: list[str] = []
    out = augment(image, AugmentConfig(**OFF, shift=0.25, fill_mode="constant"), torch.Generator().manual_seed(3),
                  applied)
    dx, dy = (float(v) for v in re.fullmatch(r"shift([+-][\d.]+)/([+-][\d.]+)", applied[0]).groups())
    black = out[0] == 0
    cols, rows = black.all(dim=0), black.all(dim=1)  # fully filled columns and rows: the band brought in
    assert int(cols.sum()) == pytest.approx(abs(dx) * 80, abs=1.5) and int(rows.sum()) == pytest.approx(abs(dy) * 60,
                                                                                                          abs=1.5)
    assert bool(cols[0]) == (dx > 0) and bool(rows[-1]) == (dy < 0)  # content moves right by dx, down by dy


def test_crop_never_fills_and_zoom_out_does() -> None:
    image = torch.full((3, 50, 70), 200, dtype=torch.uint8)
    for seed in range(5):
        cropped = augment(image, AugmentConfig(**OFF, crop_area=(0.25, 0.8), fill_mode="constant"),
                          torch.Generator().manual_seed(seed))
        assert int(cropped.min()) == 200  # the window lies inside the image: no fill
    out = augment(image, AugmentConfig(**OFF, zoom=(0.5, 0.5), fill_mode="constant"), torch.Generator())
    assert float((out[0] == 0).float().mean()) == pytest.approx(0.75, abs=0.05)  # half the size: 3/4 is fill


def test_training_config_accepts_hydra_values_and_refuses_bad_ones() -> None:
    cfg = AugmentConfig(zoom=[0.8, 1.25], crop_area=[0.5, 0.9], keras={"rotation_range": 10})
    assert cfg.zoom == (0.8, 1.25) and cfg.keras == KerasAugment(rotation_range=10) and hash(cfg)
    assert AugmentConfig().keras is None and AugmentConfig().zoom is None  # training: no warp unless asked
    for bad in ({"fill_mode": "wrap"}, {"shift": 1.0}, {"zoom": (2.0, 1.0)}, {"crop_area": (0.0, 0.5)},
                {"keras": {"zoom_range": 1.5}}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_prepare_copies_draw_one_warp_each_and_check_ranges() -> None:
    settings = PrepareSettings(raw="r", out="o", augment_ops=("rot90", *WARPS))
    chosen = []
    for seed in range(40):
        cfg = settings.augment_config(settings.augment_ops, seed)
        on = [cfg.shift > 0, cfg.zoom is not None, cfg.shear > 0, cfg.crop_area is not None, cfg.keras is not None]
        assert sum(on) == 1 and cfg.rot90
        chosen.append(on.index(True))
    assert set(chosen) == set(range(5))
    old = settings.augment_config(("rot90", "hflip"), 7)  # the original ops: no warp, as before
    assert old.shift == 0 and old.zoom is None and old.keras is None and old.hflip == 0.5
    for bad, key in (({"augment_fill_mode": "wrap"}, "augment.fill_mode"), ({"augment_zoom": (0.5, 20.0)},
                                                                             "augment.zoom"),
                     ({"augment_shear": 75.0}, "augment.shear"), ({"augment_ops": ("warp",)}, "augment.ops")):
        with pytest.raises(UserError, match=key):
            PrepareSettings(raw="r", out="o", **bad).validate()


def test_keras_draw_flips_half_the_time_and_names_it_inside() -> None:
    image, flipped = _image(), 0
    for seed in range(12):
        applied: list[str] = []
        augment(image, WARP_CONFIGS["keras"], torch.Generator().manual_seed(seed), applied)
        assert len(applied) == 1 and re.fullmatch(r"keras\(rotate[+-][\d.]+°;shift.*;shear.*;zoom[\d./]+(;hflip)?\)",
                                                  applied[0]), applied
        flipped += applied[0].endswith(";hflip)")
    assert 2 <= flipped <= 10  # horizontal_flip: even odds
