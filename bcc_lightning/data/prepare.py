"""Raw B/M image folder -> leakage-free OUT/{train,val,test}/{B,M} + manifest.csv + rejected.csv + summary.json.

Two passes keep memory flat and decode each file once: pass 1 reads bytes only (sha256, duplicates, label
conflicts, groups); the split is decided on groups; pass 2 decodes, resizes, augments and writes in parallel.
RAW is only ever read. OUT is built in a hidden folder beside it and renamed into place at the end.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bcc_lightning.data.imageio import IMAGE_EXTENSIONS, ImageDecodeError, load_rgb
from bcc_lightning.data.labels import ACCEPTED_FOLDER_NAMES, CLASS_NAMES, SHORT_NAMES, label_from_folder
from bcc_lightning.errors import UserError
from bcc_lightning.files import sha256_file

SPLITS = ("train", "val", "test")
AUGMENT_OPS = ("rot90", "rotate", "hflip", "vflip", "grayscale")
BREAKHIS_PATTERN = r"^SOB_[BM]_[A-Za-z]+-(\d+-[A-Za-z0-9]+)-\d+-\d+"
FORMATS = ("keep", "png", "jpg")
MANIFEST_COLUMNS = ["path", "split", "label", "group", "source", "sha256", "augmentation", "fold"]


@dataclass(frozen=True)
class PrepareSettings:
    raw: str
    out: str
    ratios: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 42
    group: str = "image"
    group_pattern: str | None = None
    augment_ops: tuple[str, ...] = ("rot90", "hflip", "vflip")
    augment_copies: int = 0
    augment_before_split: bool = False
    augment_max_degrees: float = 30.0
    resize: int | None = None
    format: str = "keep"
    jpg_quality: int = 95
    workers: int = 1
    overwrite: bool = False
    # K-fold cross-validation: 0 = a plain train/val/test split. With K >= 2, every image not held out for test is
    # assigned to one of K folds (whole groups, stratified); train.py data.fold=k then validates on fold k.
    folds: int = 0
    holdout_test: bool = True

    def validate(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or not math.isclose(sum(self.ratios), 1.0,
                                                                                          abs_tol=1e-6):
            raise UserError(f"ratios must be three non-negative numbers (train, val, test) that sum to 1; got "
                            f"{list(self.ratios)}.")
        if self.ratios[0] == 0:
            raise UserError("The training ratio must be above 0.")
        if self.group not in ("image", "breakhis", "pattern"):
            raise UserError(f"group must be image, breakhis or pattern (with group_pattern=REGEX); got {self.group!r}.")
        if self.group == "pattern":
            if not self.group_pattern:
                raise UserError("group=pattern needs group_pattern=REGEX whose first capture group is the group id.")
            try:
                compiled = re.compile(self.group_pattern)
            except re.error as exc:
                raise UserError(f"group_pattern {self.group_pattern!r} is not a valid regular expression: {exc}.") \
                    from exc
            if compiled.groups < 1:
                raise UserError(f"group_pattern {self.group_pattern!r} needs a capture group, e.g. '^(P\\d+)_'.")
        unknown = [op for op in self.augment_ops if op not in AUGMENT_OPS]
        if unknown:
            raise UserError(f"Unknown augment.ops {unknown}; choose from {list(AUGMENT_OPS)}.")
        if self.augment_copies < 0:
            raise UserError("augment.copies must be 0 or more.")
        if self.augment_copies and not self.augment_ops:
            raise UserError("augment.copies > 0 needs at least one op in augment.ops.")
        if self.format not in FORMATS:
            raise UserError(f"format must be one of {list(FORMATS)}; got {self.format!r}.")
        if self.resize is not None and self.resize < 8:
            raise UserError(f"resize (the longest side in pixels) must be at least 8; got {self.resize}.")
        if self.folds == 1 or self.folds < 0:
            raise UserError(f"folds must be 0 (no cross-validation) or at least 2; got {self.folds}.")
        if self.folds and self.augment_before_split:
            raise UserError("folds and augment.before_split=true do not go together: copies would cross folds.")
        if not 1 <= self.jpg_quality <= 100:
            raise UserError(f"jpg_quality must be 1..100; got {self.jpg_quality}.")


@dataclass
class Source:
    """One raw file that passed pass 1."""

    path: Path
    rel: str
    label: int
    sha256: str
    group: str = ""
    split: str = ""
    fold: int | None = None
    name: str = ""


@dataclass
class Job:
    """What one worker does for one source file: decode, then write the original and/or augmented copies."""

    source: str
    rel: str
    sha256: str
    label: int
    group: str
    fold: int | None = None
    outputs: list[tuple[str, str, tuple[str, ...], int]] = field(default_factory=list)  # (rel out, split, ops, seed)


# ----------------------------------------------------------------------------------------------------- pass 1


def _label_of(rel_parts: Sequence[str]) -> int | None:
    """The label of the nearest enclosing class folder (BreakHis: .../benign/SOB/adenosis/<slide>/40X/x.png)."""
    for part in reversed(rel_parts[:-1]):
        label = label_from_folder(part)
        if label is not None:
            return label
    return None


def _walk(raw: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(raw, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def scan_raw(raw: Path, rejected: list[tuple[str, str]]) -> list[Source]:
    """Every labelled image file under RAW with its hash; everything else goes to `rejected`."""
    sources: list[Source] = []
    unlabelled: list[str] = []
    for path in _walk(raw):
        rel = path.relative_to(raw).as_posix()
        if path.name.startswith("."):
            continue  # hidden files (.DS_Store, editor swap files) are not data
        if path.is_symlink() and not path.is_file():
            rejected.append((rel, "broken symbolic link"))
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            rejected.append((rel, f"not an image file (extension {path.suffix or 'none'!r})"))
            continue
        label = _label_of(path.relative_to(raw).parts)
        if label is None:
            unlabelled.append(rel)
            rejected.append((rel, f"no class folder ({ACCEPTED_FOLDER_NAMES}) above it"))
            continue
        try:
            size = path.stat().st_size
            if size == 0:
                rejected.append((rel, "empty file (0 bytes)"))
                continue
            sources.append(Source(path=path, rel=rel, label=label, sha256=sha256_file(path)))
        except OSError as exc:
            rejected.append((rel, f"cannot read file: {exc.strerror or exc}"))
    if not sources:
        top = sorted(p.name + ("/" if p.is_dir() else "") for p in raw.iterdir() if not p.name.startswith("."))
        raise UserError(
            f"No labelled images found under {raw} (top level holds: {', '.join(top[:15]) or 'nothing'}"
            f"{'; images outside class folders: ' + ', '.join(unlabelled[:5]) if unlabelled else ''}). Put images "
            f"(.jpg/.jpeg/.png/.tif/.tiff/.bmp) under class folders named {ACCEPTED_FOLDER_NAMES}, at any depth."
        )
    found = Counter(s.label for s in sources)
    if len(found) < 2:
        only = CLASS_NAMES[next(iter(found))]
        raise UserError(
            f"Only {only} images were found under {raw} ({found[next(iter(found))]} files); a classifier needs both "
            f"classes. Add the other class folder ({ACCEPTED_FOLDER_NAMES})."
        )
    return sources


def deduplicate(sources: list[Source], rejected: list[tuple[str, str]]) -> tuple[list[Source], dict[str, int]]:
    """Keep one copy of identical files; reject every copy of content labelled both benign and malignant."""
    by_hash: dict[str, list[Source]] = defaultdict(list)
    for source in sources:
        by_hash[source.sha256].append(source)
    kept: list[Source] = []
    duplicates = conflicts = 0
    for copies in by_hash.values():
        labels = {c.label for c in copies}
        if len(labels) > 1:
            others = ", ".join(c.rel for c in copies)
            for c in copies:
                rejected.append((c.rel, f"conflict: identical content labelled both benign and malignant ({others})"))
            conflicts += len(copies)
            continue
        kept.append(copies[0])
        for c in copies[1:]:
            rejected.append((c.rel, f"duplicate of {copies[0].rel} (same sha256)"))
            duplicates += 1
    kept.sort(key=lambda s: s.rel)
    return kept, {"duplicates": duplicates, "conflicts": conflicts}


def assign_groups(sources: list[Source], settings: PrepareSettings, rejected: list[tuple[str, str]]) -> list[Source]:
    if settings.group == "image":
        for s in sources:
            s.group = s.rel
        return sources
    pattern = re.compile(BREAKHIS_PATTERN if settings.group == "breakhis" else settings.group_pattern or "")
    kept = []
    for s in sources:
        match = pattern.search(s.path.name)
        if match is None or not match.group(1):
            rejected.append((s.rel, f"file name does not match the group pattern {pattern.pattern!r}"))
            continue
        s.group = match.group(1)
        kept.append(s)
    if not kept:
        raise UserError(f"No file name matched the group pattern {pattern.pattern!r}; check group/group_pattern "
                        f"(see rejected.csv for the names).")
    return kept


# ----------------------------------------------------------------------------------------------------- split


def assign_parts(sources: list[Source], ratios: Sequence[float], seed: int) -> tuple[dict[str, int], list[str]]:
    """Stratified grouped partition: whole groups go to one part; each class fills the parts towards the ratios.

    Groups are placed largest first (ties in seeded random order) into the part furthest below its target.
    Returns ({group: part index}, groups whose images carry both labels).
    """
    rng = random.Random(seed)
    groups: dict[str, list[Source]] = defaultdict(list)
    for s in sources:
        groups[s.group].append(s)
    mixed = [g for g, members in groups.items() if len({m.label for m in members}) > 1]
    by_class: dict[int, list[str]] = defaultdict(list)
    for name, members in groups.items():
        majority = Counter(m.label for m in members).most_common(1)[0][0]
        by_class[majority].append(name)
    parts: dict[str, int] = {}
    n = len(ratios)
    for offset, (_label, names) in enumerate(sorted(by_class.items())):
        names.sort()
        rng.shuffle(names)
        names.sort(key=lambda g: -len(groups[g]))  # stable: equal sizes keep the shuffled order
        total = sum(len(groups[g]) for g in names)
        targets = [r * total for r in ratios]
        filled = [0.0] * n
        for name in names:
            # The part with the largest missing share of its target gets the group; empty targets get nothing.
            # Ties go to a different part for each class, so that the classes' remainders do not pile up together.
            deficits = [(targets[i] - filled[i]) / targets[i] if targets[i] > 0 else -math.inf for i in range(n)]
            index = max(range(n), key=lambda i: (deficits[i], -((i - offset) % n)))
            filled[index] += len(groups[name])
            parts[name] = index
    return parts, mixed


def split_groups(sources: list[Source], settings: PrepareSettings) -> dict[str, Any]:
    """Set `split` (and `fold`) on every source: train/val/test, or K folds with an optional held-out test."""
    if not settings.folds:
        parts, mixed = assign_parts(sources, settings.ratios, settings.seed)
        for s in sources:
            s.split = SPLITS[parts[s.group]]
        return {"mixed_label_groups": mixed}
    rest = sources
    mixed: list[str] = []
    if settings.holdout_test:
        test_ratio = settings.ratios[2]
        parts, mixed = assign_parts(sources, (1 - test_ratio, test_ratio), settings.seed)
        for s in sources:
            s.split = "test" if parts[s.group] == 1 else "train"
        rest = [s for s in sources if s.split == "train"]
    folds, mixed_rest = assign_parts(rest, [1 / settings.folds] * settings.folds, settings.seed + 1)
    for s in rest:
        s.split, s.fold = "train", folds[s.group]
    return {"mixed_label_groups": sorted(set(mixed) | set(mixed_rest))}


# ----------------------------------------------------------------------------------------------------- pass 2


def _augment(image: Image.Image, ops: Sequence[str], rng: random.Random,
             max_degrees: float) -> tuple[Image.Image, list[str]]:
    """One random combination of the allowed ops (at least one applied): a new view of the same cells."""
    while True:
        applied: list[str] = []
        out = image
        if "rot90" in ops and rng.random() < 0.75:
            k = rng.choice((1, 2, 3))
            out = out.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                 Image.Transpose.ROTATE_270)[k - 1])
            applied.append(f"rot{90 * k}")
        if "rotate" in ops and rng.random() < 0.5:
            angle = rng.uniform(-max_degrees, max_degrees)
            out = _rotate_reflect(out, angle)
            applied.append(f"rotate{angle:+.1f}")
        if "hflip" in ops and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            applied.append("hflip")
        if "vflip" in ops and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            applied.append("vflip")
        if "grayscale" in ops and rng.random() < 0.5:
            out = out.convert("L").convert("RGB")
            applied.append("grayscale")
        if applied:
            return out, applied


def _rotate_reflect(image: Image.Image, angle: float) -> Image.Image:
    """Free-angle rotation with reflection padding, same size: no black corners, no crop of the centre."""
    w, h = image.size
    pad = int(math.ceil(max(w, h) * 0.5))
    array = np.asarray(image)
    pad_h, pad_w = min(pad, h - 1), min(pad, w - 1)
    padded = Image.fromarray(np.pad(array, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)), mode="reflect"))
    rotated = padded.rotate(angle, resample=Image.Resampling.BILINEAR)
    return rotated.crop((pad_w, pad_h, pad_w + w, pad_h + h))


def _resize(image: Image.Image, max_side: int | None) -> Image.Image:
    if not max_side or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, suffix: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}[suffix]
    options: dict[str, Any] = {"quality": quality} if fmt == "JPEG" else {}
    if fmt == "PNG":
        options["compress_level"] = 3  # 2x faster than the default 6 for ~15 % larger files
    if fmt == "TIFF":
        options["compression"] = "tiff_lzw"
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def process(job: Job, staging: str, settings: PrepareSettings) -> tuple[list[list[str]], str | None]:
    """Worker: decode once, write every output of this source. Returns manifest rows or a rejection reason."""
    try:
        image = load_rgb(job.source)
    except ImageDecodeError as exc:
        return [], str(exc).split(": ", 1)[-1]
    image = _resize(image, settings.resize)
    raw_bytes_ok = settings.format == "keep" and settings.resize is None
    rows = []
    for rel_out, split, ops, seed in job.outputs:
        target = Path(staging) / rel_out
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = target.suffix.lower()
        if not ops and raw_bytes_ok:
            shutil.copyfile(job.source, target)  # byte-identical original: nothing lost to re-encoding
            applied = "none"
        else:
            out = image
            applied = "none"
            if ops:
                out, names = _augment(image, ops, random.Random(seed), settings.augment_max_degrees)
                applied = "+".join(names)
            target.write_bytes(_encode(out, suffix, settings.jpg_quality))
        fold = "" if job.fold is None else str(job.fold)
        rows.append([rel_out, split, CLASS_NAMES[job.label], job.group, job.rel, job.sha256, applied, fold])
    return rows, None


def _output_name(source: Source, settings: PrepareSettings, copy: int | None) -> str:
    """Unique, readable file name: the path below the class folder joined by '__' (a/1.png and b/1.png differ)."""
    parts = Path(source.rel).parts
    start = max(i for i, p in enumerate(parts[:-1]) if label_from_folder(p) is not None) + 1
    stem = "__".join([*parts[start:-1], Path(parts[-1]).stem])
    suffix = Path(parts[-1]).suffix.lower()
    if settings.format == "png":
        suffix = ".png"
    elif settings.format == "jpg":
        suffix = ".jpg"
    elif copy is not None and suffix in (".tif", ".tiff", ".bmp"):
        suffix = ".png"  # augmented copies are 8-bit RGB: PNG keeps them lossless and small
    return f"{stem}{'' if copy is None else f'_aug{copy}'}{suffix}"


def plan_jobs(sources: list[Source], settings: PrepareSettings) -> list[Job]:
    """Outputs per source: the original in its split, plus augmented copies (train only, unless before_split)."""
    jobs = []
    rng = random.Random(settings.seed + 1)
    for s in sources:
        job = Job(source=str(s.path), rel=s.rel, sha256=s.sha256, label=s.label, group=s.group, fold=s.fold)
        cls = SHORT_NAMES[s.label]
        job.outputs.append((f"{s.split}/{cls}/{_output_name(s, settings, None)}", s.split, (), 0))
        # Training images only; with folds every non-test image is training data for K-1 of the K runs, and the
        # data module ignores copies of the validation fold.
        copies = settings.augment_copies if (settings.augment_before_split or s.split == "train") else 0
        for k in range(copies):
            split = s.split
            if settings.augment_before_split:
                # The original protocol: each augmented copy is split on its own, so copies land in any split.
                split = rng.choices(SPLITS, weights=settings.ratios)[0]
            seed = int(s.sha256[:12], 16) + 1000003 * k + settings.seed
            job.outputs.append((f"{split}/{cls}/{_output_name(s, settings, k)}", split,
                                tuple(settings.augment_ops), seed))
        jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------------------------------- main


def _check_paths(raw: Path, out: Path, overwrite: bool) -> None:
    if not raw.is_dir():
        raise UserError(f"raw={raw} does not exist or is not a folder. Pass the folder that holds your B/M (or "
                        f"benign/malignant) class folders.")
    raw_r, out_r = raw.resolve(), out.resolve()
    if out_r == raw_r or raw_r in out_r.parents or out_r in raw_r.parents:
        raise UserError(f"out={out} and raw={raw} overlap; choose an output folder outside the raw folder (and not "
                        f"above it), so that your raw images are never touched.")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} exists and is a file; choose a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"out={out} exists and is not empty. Choose a new folder, or pass overwrite=true to replace "
                        f"it (it is replaced only after the new split is complete).")


def _progress(iterable: Iterable, total: int, description: str, enabled: bool) -> Iterator:
    if not enabled:
        yield from iterable
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in iterable:
            yield item
            progress.advance(task)


class _InlineExecutor:
    """`workers=1`: the same map interface, in this process (easier to debug, no start-up cost)."""

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Any, *iterables: Iterable, chunksize: int = 1) -> Iterator:
        return map(fn, *iterables)


def _executor(workers: int) -> Any:
    return ProcessPoolExecutor(max_workers=workers) if workers > 1 else _InlineExecutor()


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def prepare(settings: PrepareSettings, progress: bool = False,
            log: Any = print) -> dict[str, Any]:
    """Build the split; returns the summary that is also written to OUT/summary.json."""
    settings.validate()
    started = time.perf_counter()
    raw, out = Path(settings.raw).expanduser(), Path(settings.out).expanduser()
    _check_paths(raw, out, settings.overwrite)
    if settings.augment_before_split and settings.augment_copies:
        log("WARNING: augment.before_split=true reproduces the original protocol: augmented copies of one image "
            "are spread over train, val AND test, so the test split is CONTAMINATED and its accuracy is inflated. "
            "Use this only to reproduce the original numbers, never to report performance.")

    rejected: list[tuple[str, str]] = []
    sources = scan_raw(raw, rejected)
    sources, dup_counts = deduplicate(sources, rejected)
    sources = assign_groups(sources, settings, rejected)
    split_info = split_groups(sources, settings)
    jobs = plan_jobs(sources, settings)

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run that was killed; ours by name
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    manifest: list[list[str]] = []
    try:
        with _executor(settings.workers) as pool:
            chunk = max(1, min(32, len(jobs) // (max(1, settings.workers) * 8)))
            results = pool.map(process, jobs, [str(staging)] * len(jobs), [settings] * len(jobs), chunksize=chunk)
            for job, (rows, reason) in _progress(zip(jobs, results), len(jobs), "writing", progress):
                if reason is None:
                    manifest.extend(rows)
                else:
                    rejected.append((job.rel, f"cannot decode: {reason}"))
        manifest.sort(key=lambda r: r[0])
        elapsed = time.perf_counter() - started
        summary = _summary(manifest, rejected, dup_counts, split_info, settings, len(sources), elapsed)
        if summary["ratio_max_deviation"] > 0.02:
            log(f"NOTE: grouped splitting could not meet the ratios exactly: achieved {summary['ratios_achieved']} "
                f"for requested {summary['ratios_requested']} (largest deviation "
                f"{summary['ratio_max_deviation']:.3f}); groups are never cut in two.")
        _check_written(summary)
        _write_csv(staging / "manifest.csv", MANIFEST_COLUMNS, manifest)
        _write_csv(staging / "rejected.csv", ["source", "reason"], sorted(rejected))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _check_written(summary: dict[str, Any]) -> None:
    counts = summary["counts"]
    settings = summary["settings"]
    if settings["folds"]:
        needed = ["train"] + (["test"] if settings["holdout_test"] else [])
        empty = [f"{split}/{cls}" for split in needed for cls in SHORT_NAMES if counts[split][cls] == 0]
        empty += [f"fold {k} {cls}" for k, per in summary["folds"].items() for cls in SHORT_NAMES if per[cls] == 0]
    else:
        empty = [f"{split}/{cls}" for split in SPLITS for cls in SHORT_NAMES
                 if settings["ratios"][SPLITS.index(split)] > 0 and counts[split][cls] == 0]
    if empty:
        raise UserError(
            f"After splitting, {', '.join(empty)} would be empty (too few images or groups of that class: "
            f"{json.dumps(counts)}). Add images, use smaller groups, or change ratios; nothing was written."
        )


def _summary(manifest: list[list[str]], rejected: list[tuple[str, str]], dup_counts: dict[str, int],
             split_info: dict[str, Any], settings: PrepareSettings, n_sources: int, elapsed: float) -> dict[str, Any]:
    counts = {split: {cls: 0 for cls in SHORT_NAMES} for split in SPLITS}
    originals = {split: {cls: 0 for cls in SHORT_NAMES} for split in SPLITS}
    groups: dict[str, set[str]] = {split: set() for split in SPLITS}
    group_splits: dict[str, set[str]] = defaultdict(set)
    folds: dict[str, dict[str, Any]] = {str(k): {"B": 0, "M": 0, "groups": set()} for k in range(settings.folds)}
    for _path, split, label, group, _source, _sha, augmentation, fold in manifest:
        if fold != "" and augmentation == "none":
            folds[fold][SHORT_NAMES[CLASS_NAMES.index(label)]] += 1
            folds[fold]["groups"].add(group)
        group_splits[group].add(split if fold == "" else f"fold{fold}")
        cls = SHORT_NAMES[CLASS_NAMES.index(label)]
        counts[split][cls] += 1
        if augmentation == "none":
            originals[split][cls] += 1
        groups[split].add(group)
    total_originals = sum(sum(v.values()) for v in originals.values())
    achieved = {s: round(sum(originals[s].values()) / total_originals, 4) if total_originals else 0.0
                for s in SPLITS}
    deviation = max(abs(achieved[s] - r) for s, r in zip(SPLITS, settings.ratios))
    crossing = sorted(g for g, s in group_splits.items() if len(s) > 1)
    contaminated = settings.augment_before_split and settings.augment_copies > 0
    return {
        "protocol": ("CONTAMINATED: augmented before splitting (original protocol); copies of one image are in "
                     "several splits" if contaminated else "leakage-free: grouped split, then augmentation of the "
                     "training split only"),
        "counts": counts,
        "originals": originals,
        "groups": {s: len(groups[s]) for s in SPLITS},
        "ratios_requested": dict(zip(SPLITS, settings.ratios)),
        "ratios_achieved": achieved,
        "ratio_max_deviation": round(deviation, 4),
        "groups_crossing_splits": len(crossing),
        "folds": {k: {"B": v["B"], "M": v["M"], "groups": len(v["groups"])} for k, v in folds.items()},
        "mixed_label_groups": split_info["mixed_label_groups"][:50],
        "sources_used": total_originals,
        "files_written": len(manifest),
        "rejected": len(rejected),
        "duplicates": dup_counts["duplicates"],
        "conflicts": dup_counts["conflicts"],
        "elapsed_s": round(elapsed, 2),
        "images_per_s": round(n_sources / elapsed, 1) if elapsed > 0 else None,
        "settings": {**asdict(settings), "ratios": list(settings.ratios), "augment_ops": list(settings.augment_ops)},
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'split':<6} {'benign':>8} {'malignant':>10} {'groups':>7} {'share':>7}"]
    for split in SPLITS:
        c = summary["counts"][split]
        lines.append(f"{split:<6} {c['B']:>8} {c['M']:>10} {summary['groups'][split]:>7} "
                     f"{summary['ratios_achieved'][split]:>7.3f}")
    for k, fold in summary.get("folds", {}).items():
        lines.append(f"fold {k:<2} {fold['B']:>7} {fold['M']:>10} {fold['groups']:>7}")
    lines.append(f"rejected {summary['rejected']} (duplicates {summary['duplicates']}, conflicts "
                 f"{summary['conflicts']}); {summary['images_per_s']} source images/s")
    lines.append(f"protocol: {summary['protocol']}")
    return "\n".join(lines)
