"""Pass 2 of bcc-prepare: plan every output file, then decode, augment, encode and write them in parallel.

Every output name is unique by construction (the path below the class folder, plus a short hash of the source's
path where two sources would still meet), files are created exclusively (nothing is ever overwritten), and every
written file is hashed again against the manifest before the folder is published.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from bcc_lightning.data.augment import AugmentConfig, augment
from bcc_lightning.data.imageio import ImageDecodeError, load_rgb
from bcc_lightning.data.labels import CLASS_NAMES, SHORT_NAMES, label_from_folder
from bcc_lightning.data.layout import SPLITS
from bcc_lightning.data.prepare.scan import Source
from bcc_lightning.data.prepare.settings import PrepareSettings
from bcc_lightning.utils.atomic_io import sha256_file
from bcc_lightning.utils.errors import UserError
from bcc_lightning.utils.progress import progress_bar

ENCODERS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


@dataclass
class Output:
    rel: str  # path below OUT
    split: str
    ops: tuple[str, ...] = ()  # augmentation ops to draw from; () = the original
    seed: int = 0


@dataclass
class Job:
    """What one worker does for one source file: decode once, then write the original and/or augmented copies."""

    source: str
    rel: str
    sha256: str
    label: int
    group: str
    fold: int | None = None
    outputs: list[Output] = field(default_factory=list)


def augment_copy(image: Image.Image, cfg: AugmentConfig, seed: int) -> tuple[Image.Image, list[str]]:
    """One augmented copy through the loader's own augmentation (data/augment.py), with at least one op applied."""
    generator = torch.Generator().manual_seed(seed)
    pixels = F.pil_to_tensor(image)
    # One thread: the workers are the parallelism, and torch's intra-op pool on a small image under load costs
    # ~100x the warp itself (0.3 s against 3 ms for 256x256 on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        while True:
            applied: list[str] = []
            out = augment(pixels, cfg, generator, applied)
            if applied:
                return F.to_pil_image(out), applied
    finally:
        torch.set_num_threads(threads)


def _resize(image: Image.Image, max_side: int | None) -> Image.Image:
    if not max_side or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, suffix: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    fmt = ENCODERS[suffix]
    options: dict[str, Any] = {"quality": quality} if fmt == "JPEG" else {}
    if fmt == "PNG":
        options["compress_level"] = 3  # 2x faster than the default 6 for ~15 % larger files
    if fmt == "TIFF":
        options["compression"] = "tiff_lzw"
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _create(target: Path, data: bytes) -> None:
    """Create a new file; an existing one is an error, never overwritten (two sources must not share a name)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as handle:
        handle.write(data)


def process(job: Job, staging: str, settings: PrepareSettings) -> tuple[list[list[str]], str | None]:
    """Worker: decode once, write every output of this source. Returns manifest rows or a rejection reason."""
    try:
        image = _resize(load_rgb(job.source), settings.resize)
    except ImageDecodeError as exc:
        return [], str(exc).split(": ", 1)[-1]
    raw_bytes_ok = settings.format == "keep" and settings.resize is None
    rows = []
    for output in job.outputs:
        target = Path(staging) / output.rel
        applied = "none"
        if not output.ops and raw_bytes_ok:
            data = Path(job.source).read_bytes()  # byte-identical original: nothing lost to re-encoding
        else:
            out = image
            if output.ops:
                out, names = augment_copy(image, settings.augment_config(output.ops, output.seed), output.seed)
                applied = "+".join(names)
            data = _encode(out, target.suffix.lower(), settings.jpg_quality)
        _create(target, data)
        fold = "" if job.fold is None else str(job.fold)
        rows.append([output.rel, output.split, CLASS_NAMES[job.label], job.group, job.rel,
                     hashlib.sha256(data).hexdigest(), applied, fold, job.sha256])
    return rows, None


def _stem_and_suffix(source: Source, settings: PrepareSettings, augmented: bool) -> tuple[str, str]:
    """A readable name: the path below the class folder joined by '__' (a/1.png and b/1.png differ)."""
    parts = Path(source.rel).parts
    start = max((i for i, p in enumerate(parts[:-1]) if label_from_folder(p) is not None), default=-1) + 1
    stem = "__".join([*parts[start:-1], Path(parts[-1]).stem])
    suffix = Path(parts[-1]).suffix.lower()
    if settings.format == "png":
        suffix = ".png"
    elif settings.format == "jpg":
        suffix = ".jpg"
    elif augmented and suffix in (".tif", ".tiff", ".bmp"):
        suffix = ".png"  # augmented copies are 8-bit RGB: PNG keeps them lossless and small
    return stem, suffix


def _unique_names(planned: list[tuple[Source, str, int | None]], settings: PrepareSettings) -> list[str]:
    """Output paths for (source, split, copy index); where two would meet (site1/B/0.png and site2/B/0.png, or
    x.jpg and x.tif written as PNG), each gets a short hash of its source path."""
    names = []
    for source, split, copy in planned:
        stem, suffix = _stem_and_suffix(source, settings, copy is not None)
        names.append((f"{split}/{SHORT_NAMES[source.label]}", stem, "" if copy is None else f"_aug{copy}", suffix))
    seen: dict[str, list[int]] = defaultdict(list)
    for index, (folder, stem, tag, suffix) in enumerate(names):
        seen[f"{folder}/{stem}{tag}{suffix}".lower()].append(index)  # case-insensitive file systems too
    result = [f"{folder}/{stem}{tag}{suffix}" for folder, stem, tag, suffix in names]
    for indices in seen.values():
        if len(indices) > 1:
            for index in indices:
                folder, stem, tag, suffix = names[index]
                short = hashlib.sha1(planned[index][0].rel.encode()).hexdigest()[:8]
                result[index] = f"{folder}/{stem}~{short}{tag}{suffix}"
    if len({r.lower() for r in result}) != len(result):
        raise UserError("Two source files map to the same output name even after disambiguation; rename one of "
                        "them in the raw folder (see the manifest's source column).")
    return result


def plan_jobs(sources: list[Source], settings: PrepareSettings) -> list[Job]:
    """Outputs per source: the original in its split, plus augmented copies (train only, unless before_split)."""
    rng = random.Random(settings.seed + 1)
    planned: list[tuple[Source, str, int | None]] = []
    seeds: list[int] = []
    for s in sources:
        planned.append((s, s.split, None))
        seeds.append(0)
        # Training images only; with folds every non-test image is training data for K-1 of the K runs, and the
        # data module ignores copies of the validation fold.
        copies = settings.augment_copies if (settings.augment_before_split or s.split == "train") else 0
        for k in range(copies):
            split = s.split
            if settings.augment_before_split:
                # The original protocol: each augmented copy is split on its own, so copies land in any split.
                split = rng.choices(SPLITS, weights=settings.ratios)[0]
            planned.append((s, split, k))
            seeds.append(int(s.sha256[:12], 16) + 1000003 * k + settings.seed)
    names = _unique_names(planned, settings)
    jobs: dict[str, Job] = {}
    for (s, split, copy), name, seed in zip(planned, names, seeds):
        job = jobs.setdefault(s.rel, Job(source=str(s.path), rel=s.rel, sha256=s.sha256, label=s.label,
                                         group=s.group, fold=s.fold))
        job.outputs.append(Output(name, split, () if copy is None else tuple(settings.augment_ops), seed))
    return list(jobs.values())


class _InlineExecutor:
    """`workers=1`: the same map interface, in this process (easier to debug, no start-up cost)."""

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Any, *iterables: Iterable, chunksize: int = 1) -> Iterator:
        return map(fn, *iterables)


def write_outputs(jobs: list[Job], staging: Path, settings: PrepareSettings, rejected: list[tuple[str, str]],
                  progress: bool) -> list[list[str]]:
    """Run every job (in `settings.workers` processes); returns the manifest rows, sorted by path."""
    manifest: list[list[str]] = []
    pool = ProcessPoolExecutor(max_workers=settings.workers) if settings.workers > 1 else _InlineExecutor()
    with pool:
        chunk = max(1, min(32, len(jobs) // (max(1, settings.workers) * 8)))
        results = pool.map(process, jobs, [str(staging)] * len(jobs), [settings] * len(jobs), chunksize=chunk)
        for job, (rows, reason) in progress_bar(zip(jobs, results), len(jobs), "writing", progress):
            if reason is None:
                manifest.extend(rows)
            else:
                rejected.append((job.rel, f"cannot decode: {reason}"))
    return sorted(manifest, key=lambda r: r[0])


def verify_written(staging: Path, manifest: list[list[str]]) -> None:
    """Every manifest row names one file on disk whose sha256 is the one recorded, and no file is unlisted."""
    listed = {row[0] for row in manifest}
    on_disk = {p.relative_to(staging).as_posix() for split in SPLITS if (staging / split).is_dir()
               for p in (staging / split).rglob("*") if p.is_file()}
    bad = [row[0] for row in manifest if sha256_file(staging / row[0]) != row[5]]
    if bad or listed != on_disk or len(listed) != len(manifest):
        raise RuntimeError(f"bcc-prepare wrote an inconsistent folder (hash mismatches: {bad[:5]}, unlisted files: "
                           f"{sorted(on_disk - listed)[:5]}); nothing was published. Please report this.")
