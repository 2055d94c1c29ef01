"""Benchmark of bcc_lightning.data.duplicates on synthetic cytology slides.

--suite geometric (default): copies made by shifts (2-25 %), zooms (0.5-2x), anisotropic zoom, crops (80-25 % of
the area, resized back or as cut), shears (11.5 and 20 degrees), free rotations, flips, the Keras ImageDataGenerator
combination with fill nearest/reflect/constant, and tiles of one slide overlapping 95-50 %, all of 700x460 sources
cut from wider slides; hard negatives are the tile touching each source (no shared tissue), every field of the
other slides, and blank tiles. Prints recall per transform, every flagged pair checked against the slides, the
negative pairs counted, describe throughput and matching time.

--suite disc: the original suite below.

Sources are tiles cut from synthetic H&E/cytology "slides" (tiles of one slide overlap < 50 %: hard negatives);
each source gets copies made by random flips, rotations, fills, grayscale, resizing, re-encoding and tone changes.
Reports recall per operation, precision over all flagged pairs, the score margin used to calibrate the module's
thresholds, describe throughput, matching time at 5k/20k/35k images and false alarms on the demo generator.

    python benchmarks/near_duplicates.py                      # geometric suite
    python benchmarks/near_duplicates.py --slides 8 --blanks 4 --quick
    python benchmarks/near_duplicates.py --suite disc --sources 100 --quick
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bcc_lightning.data import duplicates as dup  # noqa: E402

DIHEDRAL = {
    "hflip": Image.Transpose.FLIP_LEFT_RIGHT, "vflip": Image.Transpose.FLIP_TOP_BOTTOM,
    "rot90": Image.Transpose.ROTATE_90, "rot180": Image.Transpose.ROTATE_180, "rot270": Image.Transpose.ROTATE_270,
    "transpose": Image.Transpose.TRANSPOSE, "transverse": Image.Transpose.TRANSVERSE,
}
SINGLE_OPS = [*DIHEDRAL, "rotate", "grayscale", "jpeg", "png", "resize", "tone"]


# ----------------------------------------------------------------------------------------------- synthetic slides
def _blob(cx: float, cy: float, r: float, aspect: float, angle: float, rough: float,
          rng: np.random.Generator, points: int = 24) -> list[tuple[float, float]]:
    theta = np.linspace(0, 2 * math.pi, points, endpoint=False)
    wobble = 1 + sum(rough / f * np.sin(f * theta + rng.uniform(0, 2 * math.pi)) for f in (2, 3, 5))
    x, y = r * wobble * aspect * np.cos(theta), r * wobble / aspect * np.sin(theta)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + ca * a - sa * b, cy + sa * a + ca * b) for a, b in zip(x, y)]


def make_slide(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A textured smear: stained background, cytoplasm patches, fibres, nuclei of varied size/colour, RBCs."""
    hue = rng.uniform(-1, 1)
    background = np.array([236 - 10 * hue, 220 - 6 * hue, 230 + 8 * hue]) + rng.normal(0, 6, 3)
    low = rng.normal(0, 1, (max(2, height // 60), max(2, width // 60), 3)).astype(np.float32)
    field = np.asarray(Image.fromarray(low[..., 0]).resize((width, height), Image.BICUBIC))
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = background
    canvas += field[..., None] * rng.uniform(3, 10) * np.array([1.0, 1.2, 0.8])

    layers = {name: Image.new("L", (width, height), 0) for name in ("cyto", "fibre", "nuc", "dark", "rbc")}
    draw = {name: ImageDraw.Draw(im) for name, im in layers.items()}
    area = width * height
    for _ in range(int(area / rng.uniform(1500, 4000))):  # cytoplasm patches
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        draw["cyto"].polygon(_blob(x, y, rng.uniform(8, 30), rng.uniform(0.6, 1.6), rng.uniform(0, math.pi), 0.3,
                                   rng), fill=int(rng.uniform(90, 200)))
    for _ in range(int(area / rng.uniform(20000, 80000))):  # fibres
        pts = np.cumsum(rng.normal(0, 25, (6, 2)), axis=0) + rng.uniform(0, [width, height])
        draw["fibre"].line([tuple(p) for p in pts], fill=int(rng.uniform(80, 180)), width=int(rng.integers(1, 4)))
    mean_r = rng.uniform(3.5, 9.0)
    for _ in range(int(area * rng.uniform(0.05, 0.15) / (math.pi * mean_r**2))):  # nuclei, clustered
        if rng.random() < 0.5:
            x, y = rng.uniform(0, width), rng.uniform(0, height)
        else:
            x, y = rng.normal(rng.uniform(0, [width, height]), 3 * mean_r)
        r = mean_r * rng.uniform(0.6, 1.6)
        which = "dark" if rng.random() < 0.3 else "nuc"
        draw[which].polygon(_blob(x, y, r, rng.uniform(0.7, 1.4), rng.uniform(0, math.pi), rng.uniform(0, 0.5), rng),
                            fill=int(rng.uniform(150, 255)))
    for _ in range(int(area / rng.uniform(3000, 20000))):  # red blood cells
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 5)
        draw["rbc"].ellipse((x - r, y - r, x + r, y + r), fill=200)

    chroma = rng.normal(0, 1, (height // 6 + 1, width // 6 + 1)).astype(np.float32)
    texture = np.asarray(Image.fromarray(chroma).resize((width, height), Image.BILINEAR))[..., None]
    colours = {
        "cyto": np.array([215 - 20 * hue, 150, 195 + 10 * hue]) + rng.normal(0, 10, 3),
        "fibre": np.array([225, 130 + 20 * hue, 170]) + rng.normal(0, 10, 3),
        "nuc": np.array([110 - 20 * hue, 60 + 10 * hue, 150 + 20 * hue]) + rng.normal(0, 12, 3),
        "dark": np.array([60, 35, 100 + 20 * hue]) + rng.normal(0, 10, 3),
        "rbc": np.array([205, 90 + 10 * hue, 110]) + rng.normal(0, 10, 3),
    }
    for name in ("cyto", "fibre", "rbc", "nuc", "dark"):
        layer = layers[name].filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
        alpha = np.asarray(layer, np.float32)[..., None] / 255.0
        if name in ("nuc", "dark"):
            alpha = np.clip(alpha * (1 + 0.25 * texture), 0, 1)  # chromatin texture
        canvas = canvas * (1 - alpha) + colours[name] * alpha
    canvas *= rng.uniform(0.85, 1.1)
    canvas += rng.normal(0, 2.5, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def overlap(a: tuple[int, int], b: tuple[int, int], tw: int, th: int) -> float:
    """Intersection area / tile area for two tiles at top-left corners a and b."""
    return max(0, tw - abs(a[0] - b[0])) * max(0, th - abs(a[1] - b[1])) / (tw * th)


def cut_tiles(slide: Image.Image, n: int, tw: int, th: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n tile corners whose pairwise overlap is < 50 %, packed close so many pairs do overlap (hard negatives)."""
    corners: list[tuple[int, int]] = []
    for _ in range(5000):
        if len(corners) == n:
            break
        if corners and rng.random() < 0.8:  # next to an existing tile, overlapping it by up to 50 %
            bx, by = corners[rng.integers(len(corners))]
            c = (int(np.clip(bx + rng.uniform(-1, 1) * tw * 0.9, 0, slide.width - tw)),
                 int(np.clip(by + rng.uniform(-1, 1) * th * 0.9, 0, slide.height - th)))
        else:
            c = (int(rng.integers(0, slide.width - tw + 1)), int(rng.integers(0, slide.height - th + 1)))
        if all(overlap(c, o, tw, th) < 0.5 for o in corners):
            corners.append(c)
    return corners


# ----------------------------------------------------------------------------------------------- augmentations
def _encode(image: Image.Image, fmt: str, quality: int = 95) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=quality) if fmt == "JPEG" else image.save(buffer, format=fmt)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def rotate(image: Image.Image, degrees: float, fill: str, rng: np.random.Generator) -> Image.Image:
    """Rotate about the centre without expanding; corners filled like Keras 'nearest'/'reflect' or a constant."""
    resample = Image.BICUBIC if rng.random() < 0.5 else Image.BILINEAR
    if fill == "constant":
        return image.rotate(degrees, resample=resample, expand=False,
                            fillcolor=tuple(int(v) for v in rng.integers(0, 256, 3)))
    w, h = image.size
    pad = int(math.ceil((math.hypot(w, h) - min(w, h)) / 2)) + 2
    mode = "edge" if fill == "nearest" else "reflect"
    padded = Image.fromarray(np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode=mode))
    return padded.rotate(degrees, resample=resample, expand=False).crop((pad, pad, pad + w, pad + h))


def apply(image: Image.Image, op: str, rng: np.random.Generator) -> Image.Image:
    if op in DIHEDRAL:
        return image.transpose(DIHEDRAL[op])
    if op == "rotate":
        angle = rng.uniform(2, 45) * rng.choice([-1, 1])
        return rotate(image, angle, str(rng.choice(["nearest", "reflect", "constant"])), rng)
    if op == "grayscale":
        return image.convert("L").convert("RGB")
    if op == "jpeg":
        return _encode(image, "JPEG", int(rng.integers(70, 96)))
    if op == "png":
        return _encode(image, "PNG")
    if op == "resize":
        f = rng.uniform(0.5, 1.5)
        size = (max(1, round(image.width * f)), max(1, round(image.height * f)))
        return image.resize(size, [Image.BILINEAR, Image.BICUBIC, Image.LANCZOS][int(rng.integers(3))])
    if op == "tone":
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
        return ImageEnhance.Contrast(image).enhance(rng.uniform(0.85, 1.15))
    raise ValueError(op)


def make_copy(source: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A copy made by one operation, or by a chain of 2-4 (then re-encoded as JPEG or PNG)."""
    if kind != "combo":
        return apply(source, kind, rng), kind
    chain = [str(rng.choice(list(DIHEDRAL)))] if rng.random() < 0.8 else []
    chain += [str(o) for o in rng.choice(["rotate", "grayscale", "resize", "tone"], int(rng.integers(1, 4)),
                                         replace=False)]
    rng.shuffle(chain)
    chain.append("jpeg" if rng.random() < 0.7 else "png")
    image = source
    for op in chain:
        image = apply(image, op, rng)
    return image, "+".join(chain)


def _slide_job(args: tuple[int, int, int, int, int, int]) -> list[dict]:
    """One slide: its tiles (sources) and their copies, already described (runs in a worker)."""
    seed, slide_index, tiles, copies, tw, th = args
    rng = np.random.default_rng([seed, slide_index])
    slide = make_slide(int(tw * rng.uniform(2.2, 2.8)), int(th * rng.uniform(2.2, 2.8)), rng)
    kinds = SINGLE_OPS + ["combo"] * 6
    records = []
    for t, (x, y) in enumerate(cut_tiles(slide, tiles, tw, th, rng)):
        source = slide.crop((x, y, x + tw, y + th))
        source_id = slide_index * 1000 + t
        records.append({"source": source_id, "slide": slide_index, "corner": (x, y), "op": "source",
                        "descriptor": dup.describe(source)})
        for kind in rng.choice(kinds, copies, replace=False):
            image, label = make_copy(source, str(kind), rng)
            records.append({"source": source_id, "slide": slide_index, "corner": (x, y),
                            "op": "combo" if kind == "combo" else label, "chain": label,
                            "descriptor": dup.describe(image)})
    return records


# ----------------------------------------------------------------------------------------------- measurements
def accuracy(args: argparse.Namespace) -> dict:
    n_slides = math.ceil(args.sources / args.tiles)
    jobs = [(args.seed, s, args.tiles, args.copies, args.tile_w, args.tile_h) for s in range(n_slides)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        records = [r for batch in pool.map(_slide_job, jobs, chunksize=2) for r in batch]
    gen_s = time.perf_counter() - t0
    data = dup.DescriptorSet.from_descriptors([r["descriptor"] for r in records])
    source = np.array([r["source"] for r in records])
    slide = np.array([r["slide"] for r in records])

    t0 = time.perf_counter()
    matches = dup.find_copies(data)
    match_s = time.perf_counter() - t0
    flagged = {(m.query_index, m.reference_index) for m in matches}
    correct = sum(source[i] == source[j] for i, j in flagged)
    hard_fp = sum(source[i] != source[j] and slide[i] == slide[j] for i, j in flagged)

    # Direct pair recall: is each copy matched with its own source image?
    first = {}
    for i, r in enumerate(records):
        if r["op"] == "source":
            first[r["source"]] = i
    hits: dict[str, list[bool]] = defaultdict(list)
    labels = dup.clusters(len(records), matches)
    cluster_hits = []
    for i, r in enumerate(records):
        if r["op"] == "source":
            continue
        j = first[r["source"]]
        hits[r["op"]].append((min(i, j), max(i, j)) in flagged)
        cluster_hits.append(labels[i] == labels[j])
    groups = {"dihedral (flips, 90° rotations)": list(DIHEDRAL)}
    recall = {op: float(np.mean(v)) for op, v in sorted(hits.items())}
    recall_n = {op: len(v) for op, v in sorted(hits.items())}
    for name, members in groups.items():
        pooled = [h for op in members for h in hits.get(op, [])]
        recall[name], recall_n[name] = float(np.mean(pooled)), len(pooled)

    # Candidate stage alone: how many images of other sources outrank a copy's own source by cosine.
    q, _ = dup.standardised(data, data, True)
    sims = q @ q.T
    copy_rows = np.array([i for i, r in enumerate(records) if r["op"] != "source"])
    own = sims[copy_rows, [first[source[i]] for i in copy_rows]]
    other = np.where(source[None, :] != source[copy_rows, None], sims[copy_rows], -np.inf)
    outranked = (other > own[:, None]).sum(axis=1)
    candidate_rank = {f"source_within_top_{k}": float((outranked < k).mean()) for k in (1, 4, dup.TOP_K)}
    candidate_rank["median_distractors_above"] = float(np.median(outranked))

    # Calibration: verification scores of every true pair and of every same-slide pair of different sources.
    by_slide: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(slide):
        by_slide[int(s)].append(i)
    pos, neg = [], []
    for members in by_slide.values():
        m = np.array(members)
        a, b = np.triu_indices(len(m), 1)
        pairs = np.stack([m[a], m[b]], axis=1)
        same = source[pairs[:, 0]] == source[pairs[:, 1]]
        pos.append(pairs[same])
        neg.append(pairs[~same])
    pos_pairs, neg_pairs = np.concatenate(pos), np.concatenate(neg)
    pos_score = dup.verify(data, data, pos_pairs)[0]
    neg_score = dup.verify(data, data, neg_pairs)[0]
    corner = {r["source"]: r["corner"] for r in records}
    neg_overlap = np.array([overlap(corner[source[i]], corner[source[j]], args.tile_w, args.tile_h)
                            for i, j in neg_pairs])
    return {
        "images": len(records), "sources": len(first), "copies": len(records) - len(first), "slides": n_slides,
        "tile": f"{args.tile_w}x{args.tile_h}", "generate_and_describe_s": round(gen_s, 1),
        "find_copies_s": round(match_s, 2),
        "flagged_pairs": len(flagged), "true_flagged": int(correct), "hard_negative_false_alarms": int(hard_fp),
        "precision": correct / max(1, len(flagged)),
        "candidate_rank": candidate_rank, "recall_direct": recall, "recall_n": recall_n,
        "recall_cluster": float(np.mean(cluster_hits)),
        "calibration": {
            "threshold": dup.MATCH_THRESHOLD, "true_pairs": len(pos_score), "hard_negative_pairs": len(neg_score),
            "hard_negative_pairs_overlapping_25_50pct": int(((neg_overlap >= 0.25) & (neg_overlap < 0.5)).sum()),
            "true_score_quantiles": {q: float(np.quantile(pos_score, q)) for q in (0.001, 0.01, 0.05, 0.5)},
            "true_score_min": float(pos_score.min()),
            "hard_negative_score_max": float(neg_score.max()),
            "hard_negative_score_q999": float(np.quantile(neg_score, 0.999)),
            "all_pairs_recall_at_threshold": float((pos_score >= dup.MATCH_THRESHOLD).mean()),
            "all_pairs_false_alarms_at_threshold": int((neg_score >= dup.MATCH_THRESHOLD).sum()),
        },
        "worst_true_pairs": [
            {"ops": [records[i].get("chain", "source"), records[j].get("chain", "source")], "score": float(s)}
            for (i, j), s in sorted(zip(pos_pairs.tolist(), pos_score.tolist()), key=lambda t: t[1])[:8]
        ],
    }


def throughput(args: argparse.Namespace, folder: Path) -> dict:
    """describe_files on full-size 700x460 JPEG tiles (decode included): in this process, then N workers twice (the
    first call pays the worker pool's start, the second shows the steady rate). CPU seconds per image are measured in
    this process with OpenCV single-threaded, as each worker runs: on a shared machine that is the honest number
    (2 cores / CPU s per image = the rate two idle cores reach)."""
    import cv2

    rng = np.random.default_rng([args.seed, 99])
    paths = []
    for s in range(math.ceil(args.throughput_images / 8)):
        slide = make_slide(1600, 1000, rng)
        for (x, y) in cut_tiles(slide, 8, 700, 460, rng):
            path = folder / f"t{s:03d}_{x}_{y}.jpg"
            slide.crop((x, y, x + 700, y + 460)).save(path, quality=90)
            paths.append(path)
    paths = paths[:args.throughput_images]
    out = {"images": len(paths), "size": "700x460 JPEG q90", "workers": args.workers}
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    result = dup.describe_files(paths, workers=0)
    out["images_per_s_workers_0"] = round(len(paths) / (time.perf_counter() - t0), 1)
    out["cpu_ms_per_image"] = round((time.process_time() - c0) / len(paths) * 1000, 1)
    cv2.setNumThreads(threads)
    for run in ("first", "warm"):
        t0 = time.perf_counter()
        result = dup.describe_files(paths, workers=args.workers)
        elapsed = time.perf_counter() - t0
        assert len(result) == len(paths), result.errors
        out[f"images_per_s_workers_{args.workers}" + ("_first_call" if run == "first" else "")] = round(
            len(paths) / elapsed, 1)
    out["images_per_s_2_idle_cores_from_cpu"] = round(2000 / out["cpu_ms_per_image"], 1)
    image = Image.open(paths[0]).convert("RGB")
    t0 = time.perf_counter()
    for _ in range(50):
        dup.describe(image)
    out["describe_ms_decoded_700x460"] = round((time.perf_counter() - t0) / 50 * 1000, 2)
    stored = dup.DescriptorSet.from_descriptors([dup.describe(image)]).save(folder / "one.npz")
    out["bytes_per_image_npz"] = stored.stat().st_size
    out["bytes_per_image_in_memory"] = int(result.vectors[0].nbytes + result.coeffs[0].nbytes + 4 + 8 + 8)
    return out


def random_set(n: int, rng: np.random.Generator) -> dup.DescriptorSet:
    coeffs = rng.normal(size=(n, dup.RINGS, dup.ORDERS, 2)).astype(np.float32)
    coeffs /= np.sqrt((coeffs**2).sum(axis=(1, 2, 3), keepdims=True))
    return dup.DescriptorSet(
        paths=[str(i) for i in range(n)], vectors=rng.normal(size=(n, dup.FEATURE_DIM)).astype(np.float32),
        coeffs=coeffs.astype(np.float16), saturation=rng.uniform(0, 0.3, n).astype(np.float32),
        sizes=np.full((n, 2), (460, 700), np.int32), tone=rng.uniform(0.2, 0.8, (n, 2)).astype(np.float32))


def matching_time(sizes: list[int], seed: int) -> list[dict]:
    """Within-set search + verification of every top-k candidate on random descriptors."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        data = random_set(n, rng)
        t0 = time.perf_counter()
        pairs = dup.candidates(data)
        t1 = time.perf_counter()
        dup.verify(data, data, pairs)
        t2 = time.perf_counter()
        rows.append({"images": n, "candidate_pairs": len(pairs), "search_s": round(t1 - t0, 2),
                     "verify_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2)})
    return rows


def demo_false_alarms(folder: Path) -> dict:
    from bcc_lightning.data import demo

    try:
        root, how = Path(demo.generate(folder / "demo", n_per_class=60, size=128, seed=0)), "demo.generate"
    except Exception as exc:  # the package is being restructured; the images themselves come from render_image
        root, how = folder / "demo_render", f"demo.render_image (generate raised {type(exc).__name__}: {exc})"
        for label in (0, 1):
            for index in range(60):
                path = root / f"{label}_{index:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                demo.render_image(bool(label), 128, np.random.default_rng([0, label, index])).save(path)
    paths = sorted(p for p in root.rglob("*.png"))
    data = dup.describe_files(paths, workers=0)
    matches = dup.find_copies(data)
    a, b = np.triu_indices(len(data), 1)
    scores = dup.verify(data, data, np.stack([a, b], axis=1))[0]
    return {"images": len(data), "flagged_pairs": len(matches), "max_pair_score": float(scores.max()),
            "pairs_checked": len(scores), "made_by": how}


# ----------------------------------------------------------------------------------------------- geometric copies
# Copies that share tissue under an affine map (issue 25): each source tile (700x460 by default) is cut from a wider
# synthetic slide; every transform below makes one copy of it, and tiles cut next to it (no shared tissue) and the
# other slides' fields (same stains, same generator) are the hard negatives.
FILL = {"nearest": 1, "reflect": 2, "constant": 0}  # cv2.BORDER_REPLICATE, BORDER_REFLECT, BORDER_CONSTANT


def warp(image: Image.Image, linear: np.ndarray, shift: tuple[float, float] = (0.0, 0.0),
         fill: str = "nearest") -> Image.Image:
    """Keras-style warp about the centre: output pixel p shows input pixel linear @ (p - c) + c + shift * size."""
    import cv2

    w, h = image.size
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    inverse = np.hstack([linear, (centre - linear @ centre + np.array(shift) * (w, h))[:, None]])
    return Image.fromarray(cv2.warpAffine(np.asarray(image), inverse, (w, h),
                                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=FILL[fill]))


def _rot(degrees: float) -> np.ndarray:
    r = math.radians(degrees)
    return np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


def _shear(radians: float) -> np.ndarray:
    return np.array([[1.0, -math.sin(radians)], [0.0, math.cos(radians)]])


def keras_combo(image: Image.Image, fill: str, rng: np.random.Generator) -> Image.Image:
    """ImageDataGenerator(rotation_range=20, width/height_shift_range=0.1, zoom_range=0.2, shear_range=0.2,
    horizontal_flip=True, fill_mode=fill): the same draws and composition (rotation, shift, shear, zoom about the
    centre; shear taken as 0.2 rad, the stronger of Keras' two readings)."""
    linear = _rot(rng.uniform(-20, 20)) @ _shear(rng.uniform(-0.2, 0.2)) @ np.diag(rng.uniform(0.8, 1.2, 2))
    out = warp(image, linear, tuple(rng.uniform(-0.1, 0.1, 2)), fill)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def _shifted(image: Image.Image, fraction: float, rng: np.random.Generator) -> Image.Image:
    a = rng.uniform(0, 2 * math.pi)
    return warp(image, np.eye(2), (fraction * math.cos(a), fraction * math.sin(a)), "nearest")


def _crop(image: Image.Image, area: float, resize_back: bool, rng: np.random.Generator) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * math.sqrt(area)), round(h * math.sqrt(area))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((x, y, x + cw, y + ch))
    return out.resize((w, h), Image.BICUBIC) if resize_back else out


GEOMETRIC = {
    **{f"shift {p} %": (lambda im, rng, p=p: _shifted(im, p / 100, rng)) for p in (2, 5, 10, 20, 25)},
    **{f"zoom {z}": (lambda im, rng, z=z: warp(im, np.eye(2) / z)) for z in (0.5, 0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 2)},
    "anisotropic zoom (0.8-1.25 per axis)": lambda im, rng: warp(im, np.diag(1 / rng.uniform(0.8, 1.25, 2))),
    "crop 80 %, resized back": lambda im, rng: _crop(im, 0.8, True, rng),
    "crop 80 %, as cut": lambda im, rng: _crop(im, 0.8, False, rng),
    "crop 50 %, resized back": lambda im, rng: _crop(im, 0.5, True, rng),
    "crop 25 %, resized back": lambda im, rng: _crop(im, 0.25, True, rng),
    "crop 25 %, as cut": lambda im, rng: _crop(im, 0.25, False, rng),
    "shear 11.5°": lambda im, rng: warp(im, _shear(math.radians(11.5) * rng.choice([-1, 1]))),
    "shear 20°": lambda im, rng: warp(im, _shear(math.radians(20) * rng.choice([-1, 1]))),
    "free rotation (any fill)": lambda im, rng: rotate(im, rng.uniform(5, 175) * rng.choice([-1, 1]),
                                                       str(rng.choice(list(FILL))), rng),
    "flip / 90° turns": lambda im, rng: im.transpose(DIHEDRAL[str(rng.choice(list(DIHEDRAL)))]),
    **{f"Keras combination, fill {f}": (lambda im, rng, f=f: keras_combo(im, f, rng)) for f in FILL},
}
TILE_OVERLAPS = (95, 90, 75, 50)  # % of the area two tiles of one slide share


def _blank(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Glass background with noise and a faint gradient, sometimes a pen stroke: must never match anything."""
    base = np.array([236, 232, 238]) + rng.normal(0, 5, 3)
    ramp = np.linspace(-4, 4, w)[None, :, None] * rng.uniform(-1, 1)
    canvas = base + ramp + rng.normal(0, 2.0, (h, w, 3))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        pts = np.cumsum(rng.normal(0, 60, (4, 2)), axis=0) + (w / 2, h / 2)
        ImageDraw.Draw(image).line([tuple(p) for p in pts], fill=(40, 70, 160), width=int(rng.integers(3, 7)))
    return image


def _geometric_job(args: tuple[int, int, int, int]) -> list[dict]:
    """One slide three tiles wide: a source tile in the middle column, its copies, tiles overlapping it (cut to the
    left), the tile touching it on the right (hard negative). Every image is re-encoded as JPEG q90 and described."""
    seed, index, tw, th = args
    rng = np.random.default_rng([seed, abs(index), 7 if index >= 0 else 8])
    if index < 0:  # blank tiles
        return [{"slide": index, "op": "blank", "rect": None, "descriptor": dup.describe(_encode(_blank(tw, th, rng),
                                                                                                   "JPEG", 90))}]
    slide = make_slide(3 * tw, th + th // 2, rng)
    x0, y0 = tw, int(rng.integers(0, th // 2 + 1))
    source = slide.crop((x0, y0, x0 + tw, y0 + th))
    rect = (x0, y0, x0 + tw, y0 + th)
    records = [{"slide": index, "op": "source", "rect": rect, "image": source}]
    for name, make in GEOMETRIC.items():
        records.append({"slide": index, "op": name, "rect": rect, "image": make(source, rng)})
    for p in TILE_OVERLAPS:
        dx = round((1 - p / 100) * tw)  # shared area (tw - dx) * th = p % of the tile
        records.append({"slide": index, "op": f"tiles overlapping {p} %", "rect": (x0 - dx, y0, x0 - dx + tw, y0 + th),
                        "image": slide.crop((x0 - dx, y0, x0 - dx + tw, y0 + th))})
    right = (x0 + tw, y0, x0 + 2 * tw, y0 + th)
    records.append({"slide": index, "op": "adjacent tile", "rect": right, "image": slide.crop(right)})
    for r in records:
        r["descriptor"] = dup.describe(_encode(r.pop("image"), "JPEG", 90))
    return records


def _shares_tissue(a: dict, b: dict) -> bool:
    """Whether two images show common tissue (by the slide rectangles they were cut from)."""
    if a["slide"] != b["slide"] or a["rect"] is None or b["rect"] is None:
        return False
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["rect"], b["rect"]
    return min(ax1, bx1) > max(ax0, bx0) and min(ay1, by1) > max(ay0, by0)


def geometric(args: argparse.Namespace) -> dict:
    """The audit's question on synthetic slides: the copies and overlapping tiles (the "test split") searched against
    the sources, the adjacent tiles and the blank tiles (the "train split"), as find_copies(query, reference) does
    for bcc-audit; then the train split within itself (sources against adjacent tiles). Recall per transform: the
    copy matched with its source. Every flagged pair is checked against the slide geometry."""
    jobs = [(args.seed, s, args.geo_w, args.geo_h) for s in range(args.slides)]
    jobs += [(args.seed, -1 - b, args.geo_w, args.geo_h) for b in range(args.blanks)]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        records = [r for batch in pool.map(_geometric_job, jobs, chunksize=1) for r in batch]
    gen_s = time.perf_counter() - t0
    is_ref = [r["op"] in ("source", "adjacent tile", "blank") for r in records]
    query_rows = [i for i, ref in enumerate(is_ref) if not ref]
    ref_rows = [i for i, ref in enumerate(is_ref) if ref]
    query = dup.DescriptorSet.from_descriptors([records[i]["descriptor"] for i in query_rows])
    reference = dup.DescriptorSet.from_descriptors([records[i]["descriptor"] for i in ref_rows])
    t0 = time.perf_counter()
    across = dup.find_copies(query, reference)
    match_s = time.perf_counter() - t0
    within = dup.find_copies(reference)
    flagged = {(query_rows[m.query_index], ref_rows[m.reference_index]): m for m in across}
    flagged |= {(ref_rows[m.query_index], ref_rows[m.reference_index]): m for m in within}
    false_pairs = [(i, j) for i, j in flagged if not _shares_tissue(records[i], records[j])]

    source_of = {r["slide"]: i for i, r in enumerate(records) if r["op"] == "source"}
    hits: dict[str, list[bool]] = defaultdict(list)
    overlap_error = []
    for i in query_rows:
        r = records[i]
        m = flagged.get((i, source_of[r["slide"]]))
        hits[r["op"]].append(m is not None)
        if m is not None and r["op"].startswith("tiles overlapping"):
            overlap_error.append(m.overlap - int(r["op"].split()[2]) / 100)

    # Hard negatives: every pair the two searches saw that shares no tissue -- each copy against the other slides'
    # look-alike fields, its slide's adjacent tile and the blank tiles; each source against the other sources, the
    # adjacent tiles and the blanks. The candidate search saw them all; none may be flagged.
    n_negative = sum(not _shares_tissue(records[i], records[j]) for i in query_rows for j in ref_rows)
    n_negative += sum(not _shares_tissue(records[i], records[j]) for a, i in enumerate(ref_rows)
                      for j in ref_rows[a + 1:])
    n_adjacent = sum(records[j]["op"] == "adjacent tile" and records[i]["slide"] == records[j]["slide"]
                     for i in query_rows + ref_rows for j in ref_rows if i != j)
    blank_ref = np.array([records[i]["op"] == "blank" for i in ref_rows])

    # Matching time on growing subsets of slides (the set's own images: real keypoint statistics). The copies are
    # dense here (30 per source), so verification dominates; see the README for a folder of distinct images.
    timing = []
    slides = sorted({r["slide"] for r in records if r["slide"] >= 0})
    for share in (0.25, 0.5, 1.0):
        keep = set(slides[:max(1, round(share * len(slides)))])
        q = query.subset([a for a, i in enumerate(query_rows) if records[i]["slide"] in keep])
        ref = reference.subset([a for a, i in enumerate(ref_rows) if records[i]["slide"] in keep])
        t0 = time.perf_counter()
        local = dup.local_candidates(q, ref)
        t1 = time.perf_counter()
        found = dup.find_copies(q, ref)
        t2 = time.perf_counter()
        timing.append({"images": len(q) + len(ref), "local_candidates": len(local), "local_search_s": round(t1 - t0, 2),
                       "find_copies_s": round(t2 - t1, 2), "matches": len(found)})
    ref_index = {i: b for b, i in enumerate(ref_rows)}
    true_pairs = {(a, ref_index[source_of[records[i]["slide"]]]) for a, i in enumerate(query_rows)
                  if (i, source_of[records[i]["slide"]]) in flagged}
    scaled = scaling(args, query, reference, true_pairs) if args.scale and not args.quick else []
    return {
        "images": len(records), "slides": args.slides, "blank_tiles": args.blanks, "scaling": scaled,
        "tile": f"{args.geo_w}x{args.geo_h}", "generate_and_describe_s": round(gen_s, 1),
        "find_copies_s": round(match_s, 2),
        "recall": {op: float(np.mean(v)) for op, v in hits.items()}, "recall_n": {op: len(v) for op, v in hits.items()},
        "flagged_pairs": len(flagged), "false_pairs": len(false_pairs),
        "precision": (len(flagged) - len(false_pairs)) / max(1, len(flagged)),
        "false_pair_examples": [[records[i]["op"], records[j]["op"], flagged[(i, j)].transform]
                                for i, j in false_pairs[:10]],
        "negative_pairs": n_negative, "adjacent_tile_pairs": n_adjacent,
        "blank_flagged_as_blank": int(reference.blank[blank_ref].sum()),
        "tissue_flagged_as_blank": int(reference.blank[~blank_ref].sum() + query.blank.sum()),
        "tile_overlap_error_max": float(np.max(np.abs(overlap_error))) if overlap_error else None,
        "matching": timing,
        "bytes_per_image_local": int((query.kp_xy.nbytes + query.kp_desc.nbytes + query.kp_desc_mirror.nbytes)
                                     / max(1, len(query))),
    }


def stand_ins(base: dup.DescriptorSet, n: int, rng: np.random.Generator, flip: float = 0.15) -> dup.DescriptorSet:
    """n stand-ins for distinct microscope images with real ORB statistics, for timing a folder far larger than the
    suite: each keypoint (frame, plain and mirrored descriptor) is drawn from a random non-blank image of `base`, its
    descriptor bits flipped with probability `flip` (about the distance between two views of one keypoint), and put
    at a random position, so no stand-in shares tissue (keypoints under one map) with a suite image or another. They
    collide with the suite's descriptors more than distinct tissue would (each suite source has ~30 copies to draw
    from): a pessimistic load of candidates to verify."""
    usable = np.flatnonzero(~base.blank)
    per = 500
    offsets = base.kp_offsets
    image = rng.choice(usable, n * per)
    rows = offsets[image] + (rng.random(n * per) * (offsets[image + 1] - offsets[image])).astype(np.int64)
    noise = np.concatenate([np.packbits(rng.random((min(50_000, n * per - a), 256)) < flip, axis=1)
                            for a in range(0, n * per, 50_000)])
    pick = rng.choice(usable, n)
    disc = random_set(n, rng)
    return dup.DescriptorSet(
        # Disc descriptors of no image (random_set's): a stand-in is no copy about the centre of anything either.
        paths=[f"stand-in {i}" for i in range(n)], vectors=disc.vectors, coeffs=disc.coeffs,
        saturation=base.saturation[pick], sizes=base.sizes[pick], tone=base.tone[pick],
        kp_offsets=np.arange(0, n * per + 1, per, dtype=np.int64),
        kp_xy=(rng.random((n * per, 2)) * np.repeat(base.sizes[pick][:, ::-1], per, axis=0)).astype(np.float32),
        kp_desc=base.kp_desc[rows] ^ noise, kp_desc_mirror=base.kp_desc_mirror[rows] ^ noise,
        texture=base.texture[pick], kp_frame=base.kp_frame[rows])


def _peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB; Linux reports kB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1)


def scaling(args: argparse.Namespace, query: dup.DescriptorSet, reference: dup.DescriptorSet,
            true_pairs: set[tuple[int, int]]) -> list[dict]:
    """The audit's search (test against train, best pair per test image) and prepare's (within one set, up to
    --within-max images) on the suite plus N stand-ins (15 % of them on the test side): seconds, CPU seconds, the
    suite's copies still found among them, and the process's peak memory so far. Time per image should stay about
    flat as N grows (candidates per image do not grow with N; a bucket of the hashed index holds at most
    2 * BUCKET_CAP rows)."""
    rng = np.random.default_rng([args.seed, 5])
    rows = []
    for n in args.scale:
        extra = stand_ins(dup.DescriptorSet.concat([query, reference]), n, rng)
        cut = int(0.15 * n)
        test = dup.DescriptorSet.concat([query, extra.subset(range(cut))])
        train = dup.DescriptorSet.concat([reference, extra.subset(range(cut, n))])
        del extra
        images = len(test) + len(train)
        t0, c0 = time.perf_counter(), time.process_time()
        found = dup.find_copies(test, train, best_only=True)
        t1, c1 = time.perf_counter(), time.process_time()
        kept = sum((m.query_index, m.reference_index) in true_pairs for m in found)
        row = {"images": images, "stand_ins": n, "test_images": len(test), "audit_s": round(t1 - t0, 1),
               "audit_cpu_s": round(c1 - c0, 1), "audit_cpu_ms_per_image": round(1000 * (c1 - c0) / images, 2),
               "suite_copies_found": kept, "suite_copies": len(true_pairs),
               "false_pairs_with_stand_ins": sum(m.query_index >= len(query) or m.reference_index >= len(reference)
                                                 for m in found),
               "peak_rss_gb_after_audit": _peak_rss_gb(), "load_average": os.getloadavg()[0]}
        if images <= args.within_max:
            both = dup.DescriptorSet.concat([test, train])
            t2, c2 = time.perf_counter(), time.process_time()
            within = dup.find_copies(both)
            t3, c3 = time.perf_counter(), time.process_time()
            row |= {"within_s": round(t3 - t2, 1), "within_cpu_s": round(c3 - c2, 1),
                    "within_cpu_ms_per_image": round(1000 * (c3 - c2) / images, 2), "within_pairs": len(within),
                    "peak_rss_gb_after_within": _peak_rss_gb()}
        rows.append(row)
        print(f"scaling: {row}", flush=True)
    return rows


def geometric_table(geo: dict, tp: dict | None) -> str:
    lines = ["| transform (copy vs its source) | recall | n |", "|---|---:|---:|"]
    for op, value in geo["recall"].items():
        lines.append(f"| {op} | {value:.3f} | {geo['recall_n'][op]} |")
    lines.append(f"| precision, all {geo['flagged_pairs']} flagged pairs | {geo['precision']:.4f} | "
                 f"{geo['false_pairs']} false |")
    lines.append(f"| false pairs among hard negatives (other slides, adjacent tiles, blank) | {geo['false_pairs']} | "
                 f"{geo['negative_pairs']:,} pairs ({geo['adjacent_tile_pairs']} adjacent-tile) |")
    lines.append(f"| blank tiles reported blank / tissue tiles called blank | {geo['blank_flagged_as_blank']} of "
                 f"{geo['blank_tiles']} / {geo['tissue_flagged_as_blank']} | |")
    if tp:
        parallel = tp["images_per_s_workers_" + str(tp["workers"])]
        lines.append(f"| describe {tp['size']}, images/s, 1 process / {tp['workers']} processes (warm pool) | "
                     f"{tp['images_per_s_workers_0']} / {parallel} | {tp['images']} |")
        lines.append(f"| describe, CPU ms per image (decode included) / images/s two idle cores reach | "
                     f"{tp['cpu_ms_per_image']} / {tp['images_per_s_2_idle_cores_from_cpu']} | {tp['images']} |")
    for row in geo.get("scaling", []):
        within = (f"; within one set {row['within_s']} s, {row['within_cpu_ms_per_image']} CPU ms/image"
                  if "within_s" in row else "")
        lines.append(f"| {row['images']:,} images ({row['stand_ins']:,} stand-ins): audit (test against train)"
                     f"{' and prepare (within one set)' if within else ''} | {row['audit_s']} s, "
                     f"{row['audit_cpu_ms_per_image']} CPU ms/image{within} | "
                     f"{row['suite_copies_found']} of {row['suite_copies']} suite copies kept, "
                     f"{row['false_pairs_with_stand_ins']} false pairs, peak {row['peak_rss_gb_after_audit']} GB |")
    for row in geo["matching"]:
        lines.append(f"| find_copies, test against train, {row['images']} images: local search / all (s) | "
                     f"{row['local_search_s']} / {row['find_copies_s']} | {row['local_candidates']} candidates |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- report
def table(result: dict) -> str:
    acc = result["accuracy"]
    lines = ["| metric | value | n |", "|---|---|---|"]
    for op, value in acc["recall_direct"].items():
        lines.append(f"| recall: {op} | {value:.3f} | {acc['recall_n'][op]} |")
    lines.append(f"| recall (same cluster as source, all copies) | {acc['recall_cluster']:.3f} | {acc['copies']} |")
    lines.append(f"| precision, all flagged pairs | {acc['precision']:.4f} | {acc['flagged_pairs']} |")
    lines.append(f"| false alarms among hard negatives (same slide, overlap < 50 %) | "
                 f"{acc['hard_negative_false_alarms']} | {acc['calibration']['hard_negative_pairs']} |")
    for key, value in acc["candidate_rank"].items():
        lines.append(f"| candidate search (cosine only): {key} | {value:.3f} | {acc['copies']} |")
    cal = acc["calibration"]
    lines.append(f"| score: true pairs min / 1st pct | {cal['true_score_min']:.3f} / "
                 f"{cal['true_score_quantiles'][0.01]:.3f} | {cal['true_pairs']} |")
    lines.append(f"| score: hard negatives max | {cal['hard_negative_score_max']:.3f} | {cal['hard_negative_pairs']} |")
    lines.append(f"| threshold (MATCH_THRESHOLD) | {cal['threshold']:.2f} | |")
    if "demo" in result:
        demo = result["demo"]
        lines.append(f"| demo generator: flagged pairs (max score) | {demo['flagged_pairs']} "
                     f"({demo['max_pair_score']:.3f}) | {demo['images']} images |")
    if "throughput" in result:
        tp = result["throughput"]
        for key, value in tp.items():
            if key.startswith("images_per_s") or key.startswith("describe_ms") or key.startswith("bytes"):
                lines.append(f"| {key} ({tp['size']}) | {value} | {tp['images']} |")
    for row in result.get("matching", []):
        lines.append(f"| matching {row['images']} images: search + verify (s) | {row['search_s']} + "
                     f"{row['verify_s']} = {row['total_s']} | {row['candidate_pairs']} candidate pairs |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["geometric", "disc", "all"], default="geometric",
                        help="geometric: shifted/zoomed/cropped/sheared copies and overlapping tiles (default); "
                             "disc: the rotation/flip/grayscale/resize suite that calibrated MATCH_THRESHOLD")
    parser.add_argument("--slides", type=int, default=40, help="geometric: slides, one source tile each")
    parser.add_argument("--blanks", type=int, default=20, help="geometric: blank tiles (background, pen marks)")
    parser.add_argument("--geo-w", type=int, default=700)
    parser.add_argument("--geo-h", type=int, default=460)
    parser.add_argument("--sources", type=int, default=500, help="disc: source tiles (default 500)")
    parser.add_argument("--tiles", type=int, default=5, help="disc: tiles cut from each slide (default 5)")
    parser.add_argument("--copies", type=int, default=6, help="disc: copies per source (default 6)")
    parser.add_argument("--tile-w", type=int, default=350)
    parser.add_argument("--tile-h", type=int, default=230)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--throughput-images", type=int, default=240)
    parser.add_argument("--match-sizes", type=int, nargs="*", default=[5000, 20000, 35000])
    parser.add_argument("--scale", type=int, nargs="*", default=[2000, 4000, 8000],
                        help="geometric: stand-in images added to time the search at scale (none: skip)")
    parser.add_argument("--within-max", type=int, default=6000,
                        help="geometric: time prepare's within-set search only up to this many images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="skip throughput, matching time and the demo check")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the results (default docs/...json)")
    args = parser.parse_args(argv)

    result: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "numpy": np.__version__, "processor": platform.processor() or platform.machine()},
                    "module": {"THUMB": dup.THUMB, "RINGS": dup.RINGS, "ANGLES": dup.ANGLES, "ORDERS": dup.ORDERS,
                               "FEATURE_DIM": dup.FEATURE_DIM, "TOP_K": dup.TOP_K,
                               "MATCH_THRESHOLD": dup.MATCH_THRESHOLD, "MIN_OVERLAP": dup.MIN_OVERLAP}}
    t0 = time.perf_counter()
    if args.suite in ("geometric", "all"):
        result["geometric"] = geometric(args)
        print(f"geometric: {result['geometric']['images']} images in {time.perf_counter() - t0:.0f} s", flush=True)
        if not args.quick:
            with tempfile.TemporaryDirectory() as tmp:
                result["throughput"] = throughput(args, Path(tmp))
        print(geometric_table(result["geometric"], result.get("throughput")))
        print("false pairs:", json.dumps(result["geometric"]["false_pair_examples"], ensure_ascii=False))
    if args.suite in ("disc", "all"):
        result["accuracy"] = acc = accuracy(args)
        print(f"accuracy: {acc['images']} images in {time.perf_counter() - t0:.0f} s", flush=True)
        if not args.quick:
            with tempfile.TemporaryDirectory() as tmp:
                result["demo"] = demo_false_alarms(Path(tmp))
                result.setdefault("throughput", throughput(args, Path(tmp)))
            result["matching"] = matching_time(args.match_sizes, args.seed)
        cal = acc["calibration"]
        negatives = [cal["hard_negative_score_max"]] + ([result["demo"]["max_pair_score"]] if "demo" in result else [])
        # The module's MATCH_THRESHOLD is set to this midpoint of the measured gap (copies vs everything else).
        result["suggested_threshold"] = round((cal["true_score_min"] + max(negatives)) / 2, 3)
        print(table(result))
        print(f"suggested threshold (midpoint of the gap): {result['suggested_threshold']}")
        print("worst true pairs:", json.dumps(acc["worst_true_pairs"], ensure_ascii=False))
    result["total_s"] = round(time.perf_counter() - t0, 1)
    if not args.quick:
        out = args.out or REPO / "docs" / ("near_duplicates_bench.json" if args.suite == "disc"
                                           else f"near_duplicates_{args.suite}_bench.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
