"""The one augmentation: the original project's rotation, flips and grayscale (no crops or tilts: they lose cells),
plus stain colour jitter, and, off unless asked for, the geometric warps of Keras' ImageDataGenerator (shift, zoom,
shear, crop, and its usual combination) that users' notebooks apply.

The loader draws a view per image per epoch; bcc-prepare writes augmented copies with the same function.

Every random choice comes from a generator seeded per (seed, epoch, position) by the sampler, so augmentation is
the same with or without loader workers, and after resuming from a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bcc_lightning.data.stain import hed_jitter, hsv_jitter

# What a warp shows where it samples outside the image, as Keras names it: the edge pixel repeated, the image
# mirrored about its edge (Keras' and scipy's "reflect": d c b a | a b c d), or black.
FILL_MODES = {"nearest": "border", "reflect": "reflection", "constant": "zeros"}


@dataclass(frozen=True)
class KerasAugment:
    """One draw of `ImageDataGenerator(rotation_range=20, width_shift_range=0.1, height_shift_range=0.1,
    zoom_range=0.2, shear_range=0.2, horizontal_flip=True)`, the notebooks' usual call, as one affine warp.

    shear_range is in radians, as Keras up to 2.1 read it (0.2 ~ 11.5 degrees; the notebooks were written for it);
    later Keras reads degrees, where 0.2 shears by nothing visible. zoom_range: each axis scaled on its own.
    """

    rotation_range: float = 20.0
    width_shift_range: float = 0.1
    height_shift_range: float = 0.1
    zoom_range: float = 0.2
    shear_range: float = 0.2
    horizontal_flip: bool = True


@dataclass(frozen=True)
class AugmentConfig:
    rot90: bool = True
    rotation_degrees: float = 0.0
    hflip: float = 0.5
    vflip: float = 0.5
    grayscale: float = 0.0
    # Stain colour jitter strengths (data/stain.py): HED scale/shift (Tellez et al. 2019; 0.05 is "light") and HSV.
    stain: float = 0.0
    hsv: float = 0.0
    # Geometric warps, all off by default (they move tissue out of the frame and bring in fill); one resample for
    # all of them. shift: up to this fraction of each side, per axis; zoom: (low, high) magnification, drawn
    # log-uniformly (2: twice as large, a quarter of the area shown), both axes alike unless anisotropic_zoom;
    # shear: up to this many degrees; crop_area: (low, high) share of the area cut at a random place and resized
    # back to the full size; keras: one ImageDataGenerator draw; fill_mode: see FILL_MODES.
    shift: float = 0.0
    zoom: tuple[float, float] | None = None
    anisotropic_zoom: bool = False
    shear: float = 0.0
    crop_area: tuple[float, float] | None = None
    keras: KerasAugment | None = None
    fill_mode: str = "nearest"

    def __post_init__(self) -> None:
        # Hydra hands over lists and dicts: stored as tuples and a KerasAugment, so the config stays hashable.
        for name in ("zoom", "crop_area"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if isinstance(self.keras, dict):
            object.__setattr__(self, "keras", KerasAugment(**self.keras))
        problem = geometry_problem(self)
        if problem:
            raise ValueError(problem)


def geometry_problem(cfg: AugmentConfig, prefix: str = "") -> str | None:
    """What is wrong with the geometric settings, in the user's key names (prefix: 'augment.'), or None."""
    if cfg.fill_mode not in FILL_MODES:
        return f"{prefix}fill_mode must be one of {list(FILL_MODES)}; got {cfg.fill_mode!r}."
    if not 0 <= cfg.shift < 1:
        return f"{prefix}shift (a fraction of each side) must be in [0, 1); got {cfg.shift}."
    if cfg.zoom is not None and (len(cfg.zoom) != 2 or not 0.1 <= cfg.zoom[0] <= cfg.zoom[1] <= 10):
        return f"{prefix}zoom must be [low, high] magnifications with 0.1 <= low <= high <= 10; got {list(cfg.zoom)}."
    if not 0 <= cfg.shear < 60:
        return f"{prefix}shear (degrees) must be in [0, 60); got {cfg.shear}."
    if cfg.crop_area is not None and (len(cfg.crop_area) != 2 or not 0.01 <= cfg.crop_area[0] <= cfg.crop_area[1] <= 1):
        return (f"{prefix}crop_area must be [low, high] shares of the area with 0.01 <= low <= high <= 1; got "
                f"{list(cfg.crop_area)}.")
    k = cfg.keras
    if k is not None and (min(k.rotation_range, k.width_shift_range, k.height_shift_range, k.zoom_range,
                              k.shear_range) < 0 or k.zoom_range >= 1 or max(k.width_shift_range,
                                                                             k.height_shift_range) >= 1):
        return (f"{prefix}keras ranges must be >= 0, with zoom_range and the shift ranges (fractions of the side) "
                f"below 1; got {k}.")
    return None


def rotate_reflect(image: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate by a free angle, filling the corners by reflection instead of black; same size out."""
    if abs(angle) < 1e-3:
        return image
    h, w = image.shape[-2:]
    rad = math.radians(abs(angle) % 90)
    # Pad enough that the rotated frame never reaches outside the padded image.
    pad_w = math.ceil((w * math.cos(rad) + h * math.sin(rad) - w) / 2) + 1
    pad_h = math.ceil((w * math.sin(rad) + h * math.cos(rad) - h) / 2) + 1
    pad_w, pad_h = min(pad_w, w - 1), min(pad_h, h - 1)  # reflect padding cannot exceed the image size
    padded = F.pad(image, [pad_w, pad_h, pad_w, pad_h], padding_mode="reflect")
    rotated = F.rotate(padded, angle, interpolation=v2.InterpolationMode.BILINEAR)
    return F.center_crop(rotated, [h, w])


def warp(image: torch.Tensor, inverse: torch.Tensor, fill_mode: str = "nearest") -> torch.Tensor:
    """Affine warp of a uint8 (C, H, W) image, bilinear, same size out. `inverse` (3x3) maps an output pixel to the
    input pixel it shows, both in pixels about the image centre, x right and y down (Keras' convention)."""
    h, w = image.shape[-2:]
    # grid_sample works in [-1, 1] coordinates of each side (align_corners=False: the image's outer edges).
    to_unit = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=torch.float64))
    theta = (to_unit @ inverse.to(torch.float64) @ torch.linalg.inv(to_unit))[:2].to(torch.float32)
    grid = torch.nn.functional.affine_grid(theta[None], [1, image.shape[0], h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(image[None].float(), grid, mode="bilinear",
                                          padding_mode=FILL_MODES[fill_mode], align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _linear(a: float, b: float, c: float, d: float, tx: float = 0.0, ty: float = 0.0) -> torch.Tensor:
    return torch.tensor([[a, b, tx], [c, d, ty], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _shear(radians: float) -> torch.Tensor:
    return _linear(1.0, -math.sin(radians), 0.0, math.cos(radians))


def geometric_inverse(cfg: AugmentConfig, size: tuple[int, int], generator: torch.Generator,
                      names: list[str]) -> torch.Tensor | None:
    """Draw the enabled warps (crop, zoom, shear, shift, keras, applied in that order) and compose them into one
    output-to-input map for `warp`, so the image is resampled once; None when none is enabled."""
    h, w = size

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()

    maps: list[torch.Tensor] = []  # inverse maps, in the order the ops apply to the image
    if cfg.crop_area is not None:
        side = math.sqrt(uniform(*cfg.crop_area))
        cx, cy = uniform(-1, 1) * (1 - side) * w / 2, uniform(-1, 1) * (1 - side) * h / 2
        maps.append(_linear(side, 0.0, 0.0, side, cx, cy))
        names.append(f"crop{side * side:.0%}")
    if cfg.zoom is not None:
        mx = math.exp(uniform(math.log(cfg.zoom[0]), math.log(cfg.zoom[1])))
        my = math.exp(uniform(math.log(cfg.zoom[0]), math.log(cfg.zoom[1]))) if cfg.anisotropic_zoom else mx
        maps.append(_linear(1 / mx, 0.0, 0.0, 1 / my))
        names.append(f"zoom×{mx:.2f}" + (f"×{my:.2f}" if cfg.anisotropic_zoom else ""))
    if cfg.shear > 0:
        degrees = uniform(-cfg.shear, cfg.shear)
        maps.append(_shear(math.radians(degrees)))
        names.append(f"shear{degrees:+.1f}°")
    if cfg.shift > 0:
        dx, dy = uniform(-cfg.shift, cfg.shift), uniform(-cfg.shift, cfg.shift)
        maps.append(_linear(1.0, 0.0, 0.0, 1.0, -dx * w, -dy * h))  # content moves by (dx, dy) of the sides
        names.append(f"shift{dx:+.2f}/{dy:+.2f}")
    if cfg.keras is not None:
        k = cfg.keras
        # Keras' own product, rotation @ shift @ shear @ zoom, each an output-to-input map.
        angle = math.radians(uniform(-k.rotation_range, k.rotation_range))
        tx, ty = uniform(-k.width_shift_range, k.width_shift_range), uniform(-k.height_shift_range,
                                                                            k.height_shift_range)
        shear = uniform(-k.shear_range, k.shear_range)
        zx, zy = uniform(1 - k.zoom_range, 1 + k.zoom_range), uniform(1 - k.zoom_range, 1 + k.zoom_range)
        cos, sin = math.cos(angle), math.sin(angle)
        maps.append(_linear(cos, -sin, sin, cos) @ _linear(1.0, 0.0, 0.0, 1.0, tx * w, ty * h) @ _shear(shear)
                    @ _linear(zx, 0.0, 0.0, zy))
        names.append(f"keras(rotate{math.degrees(angle):+.1f}°;shift{tx:+.2f}/{ty:+.2f};"
                     f"shear{math.degrees(shear):+.1f}°;zoom{zx:.2f}/{zy:.2f})")  # augment() adds ";hflip" on a flip
    if not maps:
        return None
    inverse = maps[0]
    for later in maps[1:]:
        inverse = inverse @ later  # output -> last op's input -> ... -> the source
    return inverse


def augment(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
            applied: list[str] | None = None) -> torch.Tensor:
    """One random view of a uint8 (3, H, W) image; the names of the ops applied are appended to `applied`."""
    names: list[str] = [] if applied is None else applied

    def chance(p: float) -> bool:
        return p > 0 and torch.rand((), generator=generator).item() < p

    if cfg.rot90:
        k = int(torch.randint(0, 4, (), generator=generator))
        if k:
            image = torch.rot90(image, k, dims=(-2, -1))
            names.append(f"rot{90 * k}")
    if cfg.rotation_degrees > 0:
        angle = (torch.rand((), generator=generator).item() * 2 - 1) * cfg.rotation_degrees
        image = rotate_reflect(image, angle)
        names.append(f"rotate{angle:+.1f}")
    inverse = geometric_inverse(cfg, tuple(image.shape[-2:]), generator, names)
    if inverse is not None:
        image = warp(image, inverse, cfg.fill_mode)
        if cfg.keras is not None and cfg.keras.horizontal_flip and chance(0.5):
            image = torch.flip(image, dims=(-1,))  # Keras flips after its warp; named inside keras(...)
            names[-1] = names[-1][:-1] + ";hflip)"
    if chance(cfg.hflip):
        image = torch.flip(image, dims=(-1,))
        names.append("hflip")
    if chance(cfg.vflip):
        image = torch.flip(image, dims=(-2,))
        names.append("vflip")
    if cfg.stain > 0:
        image = hed_jitter(image, cfg.stain, generator)
        names.append("hed")
    if cfg.hsv > 0:
        image = hsv_jitter(image, cfg.hsv, generator)
        names.append("hsv")
    if chance(cfg.grayscale):
        image = F.rgb_to_grayscale(image, num_output_channels=3)
        names.append("grayscale")
    return image.contiguous()
