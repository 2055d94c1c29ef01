"""Synthetic cytology-like smears: the embedded demo dataset (NOT real patient data).

Benign: small, round, uniform nuclei with smooth outlines in cohesive sheets.
Malignant: enlarged, pleomorphic, hyperchromatic nuclei with irregular outlines, coarse chromatin, prominent
nucleoli, crowding and discohesion. Stain colour, brightness, blur and the nuclear area fraction are drawn from the
same distributions for both classes, so that mean colour alone does not tell the classes apart.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bcc_lightning.data.labels import SHORT_NAMES
from bcc_lightning.data.layout import SPLITS
from bcc_lightning.utils.atomic_io import atomic_directory
from bcc_lightning.utils.errors import UserError

MARKER = "SYNTHETIC_DEMO_DATA.json"



def _stain(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-slide colours: one draw shared by every structure, identical distribution for both classes."""
    hue_shift = rng.uniform(-1.0, 1.0)  # -1 pinker (eosin-rich) ... +1 bluer (haematoxylin-rich)
    background = np.array([236 - 6 * hue_shift, 222 - 4 * hue_shift, 232 + 6 * hue_shift]) + rng.normal(0, 5, 3)
    nucleus = np.array([88 - 14 * hue_shift, 52 + 4 * hue_shift, 120 + 18 * hue_shift]) + rng.normal(0, 8, 3)
    cytoplasm = np.array([205 - 8 * hue_shift, 170, 205 + 6 * hue_shift]) + rng.normal(0, 6, 3)
    rbc = np.array([214, 110 + 10 * hue_shift, 130]) + rng.normal(0, 8, 3)
    return {"background": background, "nucleus": nucleus, "cytoplasm": cytoplasm, "rbc": rbc}


def _blob(cx: float, cy: float, radius: float, aspect: float, angle: float, roughness: float,
          rng: np.random.Generator, points: int = 28) -> list[tuple[float, float]]:
    """Polygon of an ellipse whose radius wobbles by `roughness` (0 = smooth outline)."""
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    wobble = np.ones(points)
    if roughness > 0:
        for freq in (2, 3, 5, 7):
            wobble += roughness / freq * np.sin(freq * theta + rng.uniform(0, 2 * math.pi))
    rx, ry = radius * wobble * aspect, radius * wobble / aspect
    x, y = rx * np.cos(theta), ry * np.sin(theta)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + ca * a - sa * b, cy + sa * a + ca * b) for a, b in zip(x, y)]


def _nuclei(malignant: bool, size: int, rng: np.random.Generator) -> list[dict]:
    """Nucleus geometry for one image; the total nuclear area fraction has the same distribution in both classes."""
    scale = size / 128.0
    area_fraction = rng.uniform(0.07, 0.16)
    if malignant:
        mean_radius = rng.uniform(6.0, 8.0) * scale
    else:
        mean_radius = rng.uniform(3.0, 3.8) * scale
    count = max(3, int(area_fraction * size * size / (math.pi * mean_radius**2)))
    nuclei = []
    if malignant:
        # Discohesive: scattered singles plus a crowded, overlapping cluster.
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        for i in range(count):
            if i < count // 2:
                x, y = rng.normal([cx, cy], 1.6 * mean_radius)
            else:
                x, y = rng.uniform(0.05, 0.95, 2) * size
            nuclei.append({"x": x, "y": y, "r": mean_radius * rng.uniform(0.6, 1.5),
                           "aspect": rng.uniform(0.7, 1.4), "rough": rng.uniform(0.35, 0.7)})
    else:
        # Cohesive sheet(s): a jittered honeycomb around one or two centres.
        centres = rng.uniform(0.25, 0.75, (rng.integers(1, 3), 2)) * size
        spacing = 2.7 * mean_radius
        per_sheet = math.ceil(count / len(centres))
        for cx, cy in centres:
            ring = 0
            placed = 0
            while placed < per_sheet:
                for k in range(max(1, 6 * ring)):
                    if placed >= per_sheet:
                        break
                    angle = 2 * math.pi * k / max(1, 6 * ring)
                    x = cx + ring * spacing * math.cos(angle) + rng.normal(0, 0.15 * spacing)
                    y = cy + ring * spacing * math.sin(angle) + rng.normal(0, 0.15 * spacing)
                    nuclei.append({"x": x, "y": y, "r": mean_radius * rng.uniform(0.92, 1.08),
                                   "aspect": rng.uniform(0.92, 1.08), "rough": 0.0})
                    placed += 1
                ring += 1
    return nuclei


def render_image(malignant: bool, size: int, rng: np.random.Generator) -> Image.Image:
    """One synthetic stained smear as an RGB image of size x size pixels."""
    stain = _stain(rng)
    nuclei = _nuclei(malignant, size, rng)
    scale = size / 128.0

    cytoplasm = Image.new("L", (size, size), 0)
    nuclear = Image.new("L", (size, size), 0)
    nucleoli = Image.new("L", (size, size), 0)
    rbcs = Image.new("L", (size, size), 0)
    draw_c, draw_n, draw_o, draw_r = (ImageDraw.Draw(im) for im in (cytoplasm, nuclear, nucleoli, rbcs))

    for _ in range(rng.integers(4, 20)):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(3.8, 4.6) * scale
        draw_r.ellipse((x - r, y - r, x + r, y + r), fill=200)
        draw_r.ellipse((x - r / 2.2, y - r / 2.2, x + r / 2.2, y + r / 2.2), fill=110)  # pale central pallor
    for n in nuclei:
        angle = rng.uniform(0, math.pi)
        draw_c.polygon(_blob(n["x"], n["y"], n["r"] * 1.9, n["aspect"], angle, 0.15, rng), fill=150)
        draw_n.polygon(_blob(n["x"], n["y"], n["r"], n["aspect"], angle, n["rough"], rng), fill=255)
        if malignant:
            for _ in range(rng.integers(1, 3)):
                ox, oy = rng.normal(0, 0.3 * n["r"], 2)
                rr = max(1.0, 0.22 * n["r"])
                draw_o.ellipse((n["x"] + ox - rr, n["y"] + oy - rr, n["x"] + ox + rr, n["y"] + oy + rr), fill=255)

    # Chromatin: fine and even in benign nuclei; coarse and clumped in malignant ones (same mean darkness).
    cells = 24 if not malignant else 10
    coarse = rng.uniform(0.75, 1.25, (cells, cells)).astype(np.float32)
    if not malignant:
        coarse = 0.9 + 0.2 * (coarse - 0.75)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))

    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = stain["background"]
    for layer, colour, strength in ((cytoplasm, stain["cytoplasm"], 0.55), (rbcs, stain["rbc"], 0.85)):
        alpha = np.asarray(layer, dtype=np.float32)[..., None] / 255.0 * strength
        canvas = canvas * (1 - alpha) + colour * alpha
    darkness = rng.uniform(0.75, 0.95) * (1.1 if malignant else 1.0)  # mild hyperchromasia
    alpha = np.asarray(nuclear, dtype=np.float32)[..., None] / 255.0 * np.clip(darkness * texture, 0, 1)[..., None]
    canvas = canvas * (1 - alpha) + stain["nucleus"] * alpha
    alpha = np.asarray(nucleoli, dtype=np.float32)[..., None] / 255.0 * 0.8
    canvas = canvas * (1 - alpha) + (stain["nucleus"] * 0.45 + np.array([40, 0, 0])) * alpha

    canvas *= rng.uniform(0.82, 1.12)  # illumination
    canvas += rng.normal(0, 3.0, canvas.shape)  # sensor noise
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.1) * scale))


def split_indices(n: int, ratios: Sequence[float], rng: np.random.Generator) -> list[str]:
    """Assign n items to train/val/test in the given ratios, after a seeded shuffle."""
    order = rng.permutation(n)
    n_val, n_test = round(n * ratios[1]), round(n * ratios[2])
    splits = [""] * n
    for rank, index in enumerate(order):
        splits[index] = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
    return splits


def generate(out: str | Path, n_per_class: int = 240, size: int = 128, seed: int = 0,
             ratios: Sequence[float] = (0.70, 0.15, 0.15), overwrite: bool = False) -> Path:
    """Write the demo dataset to `out/{train,val,test}/{B,M}/*.png`, split by source image, stratified by class.

    If `out` already holds a demo dataset made with the same settings it is reused. The folder is built beside
    `out` and renamed into place, so an interrupted run leaves nothing half-written.
    """
    out = Path(out)
    settings = {"n_per_class": n_per_class, "size": size, "seed": seed, "ratios": list(ratios)}
    marker = out / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()).get("settings") == settings:
            return out
        if not overwrite:
            raise UserError(
                f"{out} holds a demo dataset made with other settings ({marker}). Delete that folder, choose another "
                f"`out=`, or pass overwrite=true to regenerate it."
            )
    elif out.exists() and any(out.iterdir()):
        raise UserError(
            f"{out} exists and is not a demo dataset made by this tool; refusing to write into it so that nothing of "
            f"yours is overwritten. Choose another folder with `out=` (or `data.root=` for experiment=demo)."
        )

    # Replacing is only reached for our own demo folder (marker present) with overwrite=true, or an empty folder.
    with atomic_directory(out, replace=True) as tmp:
        counts = {s: {c: 0 for c in SHORT_NAMES} for s in SPLITS}
        for label, cls in enumerate(SHORT_NAMES):
            splits = split_indices(n_per_class, ratios, np.random.default_rng([seed, 1000 + label]))
            for index in range(n_per_class):
                rng = np.random.default_rng([seed, label, index])
                split = splits[index]
                folder = tmp / split / cls
                folder.mkdir(parents=True, exist_ok=True)
                render_image(bool(label), size, rng).save(folder / f"demo_{cls}_{index:04d}.png", optimize=False)
                counts[split][cls] += 1
        info = {
            "warning": "SYNTHETIC DATA generated by bcc_lightning.data.demo; not real microscopy, not for any "
                       "clinical or scientific conclusion.",
            "settings": settings,
            "counts": counts,
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        (tmp / "README.txt").write_text(info["warning"] + "\n")
    return out


def generate_raw(out: str | Path, n_per_class: int = 100, width: int = 700, height: int = 460,
                 seed: int = 0) -> Path:
    """An unsplit raw folder `out/{B,M}/*.png` of microscope-sized images, for trying and benchmarking prepare."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another folder with `out=`.")
    with atomic_directory(out, replace=True) as tmp:  # replaces at most an empty folder (checked above)
        for label, cls in enumerate(SHORT_NAMES):
            (tmp / cls).mkdir(parents=True)
            for index in range(n_per_class):
                rng = np.random.default_rng([seed, label, index])
                image = render_image(bool(label), max(width, height), rng).resize((width, height), Image.BILINEAR)
                image.save(tmp / cls / f"raw_{cls}_{index:05d}.png", compress_level=1)
        (tmp / "README.txt").write_text("SYNTHETIC raw images generated by bcc_lightning.data.demo (not real data).\n")
    return out


def is_demo_root(root: str | Path) -> bool:
    return (Path(root) / MARKER).is_file()
