"""Leakage audit of a split folder: copies of one image in two splits, and views that share tissue.

A copy is rotated, flipped, grayscale, re-encoded, resized, shifted, zoomed, cropped or sheared; an overlapping view
shares at least audit.min_overlap of either image's area with a view in another split (tiles cut with overlap, a
higher magnification of a region). Both count as leakage. Blank images (background, pen marks) are never matched
and are listed apart.

Every image of train/val/test (or of the folds of a prepared root) is described once with
bcc_lightning.data.duplicates; descriptors are cached per split beside the decoded-image cache, so a second audit of
an unchanged folder only reads a few small .npz files. Copies are searched val->train, test->train and test->val
(with folds: each fold's validation images against the other folds' training images).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bcc_lightning.data import duplicates
from bcc_lightning.data.cache import default_cache_dir
from bcc_lightning.data.duplicates import DescriptorSet, describe_files, find_copies
from bcc_lightning.data.labels import SHORT_NAMES
from bcc_lightning.data.layout import SPLITS, fold_samples, fold_settings, read_manifest, scan_split
from bcc_lightning.utils.atomic_io import atomic_write, write_json, write_text

VERSION = 2  # bump when the audit's use of descriptors changes, so old cache files are not reused
LEAKAGE_COLUMNS = ("path", "split", "copy_of", "copy_split", "kind", "transform", "score", "overlap",
                   "overlap_copy_of", "scale", "angle", "shift_x", "shift_y", "inliers")
# (query split, reference split, summary key): the directions in which a copy inflates a reported metric.
CHECKS = (("val", "train", "val_with_copy_in_train"), ("test", "train", "test_with_copy_in_train"),
          ("test", "val", "test_with_copy_in_val"))
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class AuditResult:
    """What the audit found; rows are leakage.csv's, one per image that has a copy in an earlier split."""

    root: str
    fold: int | None
    sizes: dict[str, int]  # images described per split (or fold)
    labels: dict[str, int]  # path -> label of every described image
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # "test->train" -> {"B": n, "M": n, "total": n}
    keys: dict[str, str] = field(default_factory=dict)  # "test->train" -> summary key
    errors: dict[str, str] = field(default_factory=dict)  # unreadable files: path -> reason
    cached: int = 0  # splits whose descriptors came from the cache
    blank: dict[str, str] = field(default_factory=dict)  # near-uniform images, never matched: path -> split
    min_overlap: float = duplicates.MIN_OVERLAP

    def summary(self) -> dict[str, Any]:
        """Counts for metrics.json and the report banner."""
        found = {key: 0 for _, _, key in CHECKS}
        for pair, key in self.keys.items():
            found[key] += self.counts.get(pair, {}).get("total", 0)
        totals = {f"n_{s}": n for s, n in self.sizes.items()}
        copies = sum(r["kind"] == "copy" for r in self.rows)
        return {**found, **totals, "copies_across_splits": len(self.rows), "copies": copies,
                "overlapping_views": len(self.rows) - copies, "min_overlap": self.min_overlap,
                "clean": not self.rows, "blank": len(self.blank), "unreadable": len(self.errors), "root": self.root,
                "fold": self.fold}


def _describe_key(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256(json.dumps([VERSION, duplicates.DESCRIPTOR_GRID, duplicates.MATCH_THRESHOLD],
                                       default=str).encode())
    for path in paths:
        try:
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:32]


def describe_cached(paths: Sequence[Path], cache_dir: Path | None, workers: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[DescriptorSet, bool]:
    """Descriptors of `paths` from cache_dir/descriptors/<key>.npz, computed and saved when absent.

    Returns (set, whether it came from the cache). cache_dir None: no caching. A cache that cannot be written (a
    read-only home) only costs the next run the time to describe again.
    """
    target = None if cache_dir is None else Path(cache_dir).expanduser() / "descriptors" / f"{_describe_key(paths)}.npz"
    if target is not None and target.is_file():
        try:
            return DescriptorSet.load(target), True
        except (OSError, ValueError, KeyError):
            pass  # damaged or from another grid: describe again and overwrite it
    described = describe_files(paths, workers=workers, progress=progress)
    if target is not None:
        try:
            described.save(target)
        except OSError:
            pass
    return described, False


def _parts(root: Path, fold: int | None) -> tuple[dict[str, list[tuple[Path, int]]], list[tuple[str, str, str]]]:
    """The sets to describe and the (query, reference, summary key) checks between them."""
    folds, holdout = fold_settings(root)
    if fold is not None:
        return {s: fold_samples(root, s, fold) for s in SPLITS}, list(CHECKS)
    if not folds or (root / "train").is_dir() and not read_manifest(root):
        return {s: scan_split(root, s) for s in SPLITS}, list(CHECKS)
    # All folds of a cross-validation root: each fold's originals (its validation images in run k) against the other
    # folds' images including their augmented copies (training data of run k); the test split against every fold.
    from bcc_lightning.data.labels import label_from_folder

    parts: dict[str, list[tuple[Path, int]]] = {}
    originals: dict[str, list[tuple[Path, int]]] = {}
    for row in read_manifest(root) or []:
        item = (root / row["path"], int(label_from_folder(row["label"]) or 0))
        name = f"fold{row['fold']}" if row.get("fold", "") != "" else row["split"]
        parts.setdefault(name, []).append(item)
        if row["augmentation"] == "none":
            originals.setdefault(name, []).append(item)
    checks = []
    fold_names = [f"fold{k}" for k in range(folds) if f"fold{k}" in parts]
    for name in fold_names:
        parts[f"{name}:val"] = originals.get(name, [])
        checks.append((f"{name}:val", "+".join(n for n in fold_names if n != name), "val_with_copy_in_train"))
    if holdout and "test" in parts:
        checks.append(("test", "+".join(fold_names), "test_with_copy_in_train"))
    return parts, checks


def audit_splits(root: str | Path, fold: int | None = None, workers: int | None = None,
                 cache_dir: str | Path | None | bool = None, progress: Progress | None = None,
                 min_overlap: float = duplicates.MIN_OVERLAP) -> AuditResult:
    """Find images of val/test that have a copy in train (or test in val), or share at least min_overlap of either
    image's area with a view there.

    fold: one cross-validation run of a prepared root; None audits the plain splits, or every fold of a root with
    folds. cache_dir: None = default_cache_dir(); False = no descriptor cache.
    """
    if not 0.0 < float(min_overlap) <= 1.0:
        from bcc_lightning.utils.errors import UserError

        raise UserError(f"audit.min_overlap must be in (0, 1] (got {min_overlap}): it is the share of an image's area "
                        f"two views must have in common to count as one sample (default 0.5).")
    root = Path(root).expanduser()
    cache = default_cache_dir() if cache_dir is None else (None if cache_dir is False else Path(str(cache_dir)))
    parts, checks = _parts(root, fold)
    sets: dict[str, DescriptorSet] = {}
    labels: dict[str, int] = {}
    result = AuditResult(root=str(root.resolve()), fold=fold, sizes={}, labels=labels, min_overlap=min_overlap)
    for name, samples in parts.items():
        if ":" in name:
            continue  # a subset of a fold: sliced below, never described twice
        paths = [p for p, _ in samples]
        labels.update((str(p), lab) for p, lab in samples)
        tick = None if progress is None else (lambda done, total, name=name: progress(name, done, total))
        sets[name], hit = describe_cached(paths, cache, workers, tick)
        result.cached += hit
        result.errors.update(sets[name].errors)
        for row in np.flatnonzero(sets[name].blank):
            result.blank[_rel(sets[name].paths[row], root)] = name
    for name, samples in parts.items():
        if ":" in name:
            whole = sets[name.split(":")[0]]
            keep = {str(p) for p, _ in samples}
            rows = [i for i, p in enumerate(whole.paths) if p in keep]
            sets[name] = _subset(whole, rows)
    # Sizes of what is audited: a fold counts its validation images (originals), a split all of its images.
    result.sizes = {name.replace(":val", ""): len(s) for name, s in sets.items()
                    if ":" in name or f"{name}:val" not in sets}

    for query_name, ref_names, key in checks:
        reference = DescriptorSet.concat([sets[n] for n in ref_names.split("+")]) if ref_names else None
        query = sets[query_name]
        pair = f"{query_name.replace(':val', '')}->{ref_names if '+' not in ref_names else 'other folds'}"
        result.keys[pair] = key
        counts = {c: 0 for c in SHORT_NAMES} | {"total": 0}
        result.counts[pair] = counts
        if reference is None or not len(query) or not len(reference):
            continue
        best: dict[int, duplicates.Match] = {}
        for match in find_copies(query, reference, min_overlap=min_overlap, best_only=True):
            if match.query_index not in best or _rank(match) > _rank(best[match.query_index]):
                best[match.query_index] = match
        ref_split = _split_of(reference, sets, ref_names)
        for qi, match in sorted(best.items()):
            path = query.paths[qi]
            copy_of = reference.paths[match.reference_index]
            counts[SHORT_NAMES[labels.get(path, 0)]] += 1
            counts["total"] += 1
            g = match.geometry
            result.rows.append({"path": _rel(path, root), "split": query_name.replace(":val", ""),
                                "copy_of": _rel(copy_of, root), "copy_split": ref_split[match.reference_index],
                                "kind": match.kind, "transform": match.transform,
                                "score": round(min(match.score, 1.0), 4), "overlap": round(match.overlap_query, 3),
                                "overlap_copy_of": round(match.overlap_reference, 3),
                                "scale": round(g.get("scale", 1.0), 3), "angle": round(g.get("angle", 0.0), 1),
                                "shift_x": round(g.get("shift_x", 0.0), 3), "shift_y": round(g.get("shift_y", 0.0), 3),
                                "inliers": match.inliers, "matrix": match.matrix,
                                "label": labels.get(path, 0), "copy_label": labels.get(copy_of, 0)})
    return result


def _rank(match: duplicates.Match) -> tuple[bool, float, float]:
    """Which of a query's matches leakage.csv shows: a copy before an overlapping view, then the larger share."""
    return match.kind == "copy", match.overlap, match.score


def _subset(s: DescriptorSet, rows: list[int]) -> DescriptorSet:
    return s.subset(rows)


def _split_of(reference: DescriptorSet, sets: dict[str, DescriptorSet], ref_names: str) -> list[str]:
    return [name for name in ref_names.split("+") for _ in range(len(sets[name]))]


def _rel(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path


def _share(n: int, total: int, what: str) -> str:
    return f"{n:,} of {total:,} {what}" + (f" ({100 * n / total:.1f} %)" if total else "")


def verdict(result: AuditResult) -> str:
    """One paragraph: what crosses splits (copies and overlapping views), what it means, and how to re-split."""
    s = result.summary()
    total = sum(result.sizes.values())
    unreadable = f" {s['unreadable']} file(s) could not be read (listed in leakage.md)." if s["unreadable"] else ""
    blank = (f" {s['blank']} blank image(s) (background, pen marks) were not compared (listed in leakage.md)."
             if s["blank"] else "")
    if s["clean"]:
        # "copies" covers overlapping views here: the sentence is the one other tools and tests already read.
        return f"No copies across splits among {total:,} images.{blank}{unreadable}"
    n_test = s.get("n_test", 0)
    n_val = sum(n for k, n in result.sizes.items() if k == "val" or k.startswith("fold"))
    parts = []
    if s["test_with_copy_in_train"]:
        parts.append(f"{_share(s['test_with_copy_in_train'], n_test, 'test images')} have a copy in train")
    if s["test_with_copy_in_val"]:
        parts.append(f"{_share(s['test_with_copy_in_val'], n_test, 'test images')} have a copy in val")
    if s["val_with_copy_in_train"]:
        folds = result.fold is None and "train" not in result.sizes
        what, where = (("validation-fold images", "a copy in another fold") if folds
                       else ("val images", "a copy in train"))
        parts.append(f"{_share(s['val_with_copy_in_train'], n_val, what)} have {where}")
    inflated = "test metrics" if s["test_with_copy_in_train"] or s["test_with_copy_in_val"] else \
        "validation metrics (and checkpoint selection)"
    kinds = (f" ({s['copies']} copies, {s['overlapping_views']} overlapping views sharing at least "
             f"{100 * s['min_overlap']:.0f} % of an image's area; both leak)")
    return (f"{'; '.join(parts)}{kinds}: {inflated} from this folder are inflated. Re-split with: "
            f"bcc-prepare raw={result.root} out=NEW group=content{blank}{unreadable}")


def _outlines(row: dict[str, Any], query_hw: tuple[int, int], ref_hw: tuple[int, int]) -> tuple[Any, Any]:
    """The shared region as a polygon in each image: the other image's rectangle mapped through the fitted map
    (query = A ref + t) and clipped to this one. A copy about the centre (no map) shares the whole image."""
    import cv2

    def rect(h: int, w: int) -> np.ndarray:
        return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)

    matrix = row.get("matrix")
    if matrix is None:
        return rect(*query_hw), rect(*ref_hw)
    forward = np.asarray(matrix, np.float64)
    inverse = cv2.invertAffineTransform(forward)

    def clip(points: np.ndarray, h: int, w: int) -> np.ndarray:
        points = points.astype(np.float32)
        if np.cross(points[1] - points[0], points[2] - points[1]) < 0:
            points = points[::-1].copy()
        _, polygon = cv2.intersectConvexConvex(rect(h, w), points)
        return np.zeros((0, 2), np.float32) if polygon is None else polygon.reshape(-1, 2)

    in_query = clip(rect(*ref_hw) @ forward[:, :2].T + forward[:, 2], *query_hw)
    in_ref = clip(rect(*query_hw) @ inverse[:, :2].T + inverse[:, 2], *ref_hw)
    return in_query, in_ref


def _pairs_png(path: Path, result: AuditResult, root: Path, limit: int = 8) -> bool:
    """Side by side, the closest pairs with their shared region outlined; False when there is nothing to show."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon

    from bcc_lightning.data.imageio import ImageDecodeError, load_rgb

    # Copies first, then overlapping views by the share of the image they cover.
    chosen = sorted(result.rows, key=lambda r: (r["kind"] != "copy", -r["overlap"], -r["score"]))[:limit]
    if not chosen:
        return False
    fig, axes = plt.subplots(len(chosen), 2, figsize=(6, 2.6 * len(chosen)), squeeze=False)
    for row, (left, right) in zip(chosen, axes):
        images = []
        for ax, rel, split in ((left, row["path"], row["split"]), (right, row["copy_of"], row["copy_split"])):
            try:
                image = load_rgb(root / rel)
                ax.imshow(image)
                images.append((image.height, image.width))
            except ImageDecodeError:
                images.append(None)
            ax.set_title(f"{split}: {Path(rel).name[:28]}", fontsize=7)
            ax.axis("off")
        if all(images):
            for ax, polygon in zip((left, right), _outlines(row, images[0], images[1])):
                if len(polygon) >= 3:
                    ax.add_patch(Polygon(polygon - 0.5, closed=True, fill=False, edgecolor="yellow", linewidth=1.5))
        left.text(0, -0.12, f"{row['kind']}: {row['transform']} (overlap {row['overlap']:.2f} / "
                            f"{row['overlap_copy_of']:.2f})", transform=left.transAxes, fontsize=7, va="top")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return True


def write_audit(outdir: str | Path, result: AuditResult) -> dict[str, Path]:
    """leakage.csv, leakage.json (the summary), leakage.md and leakage_pairs.png (when copies were found)."""
    outdir = Path(outdir)
    root = Path(result.root)

    def csv_rows(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=LEAKAGE_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(result.rows)

    written = {"csv": atomic_write(outdir / "leakage.csv", csv_rows),
               "json": write_json(outdir / "leakage.json", result.summary())}
    has_png = _pairs_png(outdir / "leakage_pairs.png", result, root)
    s = result.summary()
    lines = [f"# Leakage audit of `{result.root}`" + (f" (fold {result.fold})" if result.fold is not None else ""),
             "", verdict(result), "", "Images per split: " + ", ".join(f"{k} {v:,}" for k, v in result.sizes.items()),
             "", f"Copies (one image (almost) wholly within the other): {s['copies']}; overlapping views (sharing at "
                 f"least {100 * result.min_overlap:.0f} % of either image, `audit.min_overlap`): "
                 f"{s['overlapping_views']}.",
             "", "| query -> reference | benign | malignant | total |", "|---|---:|---:|---:|"]
    for pair, c in result.counts.items():
        lines.append(f"| {pair} | {c['B']} | {c['M']} | {c['total']} |")
    mixed = [r for r in result.rows if r["label"] != r["copy_label"]]
    if mixed:
        lines += ["", f"{len(mixed)} copies carry the other label than their original (label noise): see "
                      "leakage.csv."]
    if has_png:
        lines += ["", "Closest pairs (left: the image, right: its copy in the other split; the shared region is "
                      "outlined):", "", "![closest pairs](leakage_pairs.png)"]
    if result.rows:
        lines += ["", "| image | copy of | kind | map | overlap (image / copy of) |", "|---|---|---|---|---|"]
        for row in sorted(result.rows, key=lambda r: (r["kind"] != "copy", -r["overlap"]))[:20]:
            lines.append(f"| `{row['path']}` | `{row['copy_of']}` | {row['kind']} | {row['transform']} | "
                         f"{row['overlap']:.2f} / {row['overlap_copy_of']:.2f} |")
    if result.blank:
        lines += ["", f"Blank images ({len(result.blank)}), near-uniform (background, pen marks): never compared, "
                      "since any two of them look alike. Remove them from the data if they carry no tissue:", ""]
        lines += [f"- `{p}` ({split})" for p, split in sorted(result.blank.items())[:50]]
    if result.errors:
        lines += ["", f"Unreadable files ({len(result.errors)}):", ""]
        lines += [f"- `{p}`: {reason}" for p, reason in sorted(result.errors.items())[:50]]
    lines += ["", "Files: `leakage.csv` (" + ", ".join(LEAKAGE_COLUMNS) + "), `leakage.json`."]
    written["md"] = write_text(outdir / "leakage.md", "\n".join(lines) + "\n")
    if has_png:
        written["png"] = outdir / "leakage_pairs.png"
    return written


def audit_workers(setting: Any) -> int | None:
    """auto -> the describe default (up to 4 processes); 1, or train/eval's data.num_workers=0 -> in this process."""
    if setting in (None, "auto"):
        return None
    workers = int(setting)
    return workers if workers > 1 else 0




AUDIT_MODES = ("warn", "error", "off")


def audit_gate(mode: Any, root: str | Path, fold: int | None, workers: int | None = None,
               cache_setting: Any = None, warn: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """train/eval's `data.audit=warn|error|off`: the summary for metrics.json (None when off).

    warn logs the verdict and goes on; error raises a UserError when copies cross splits, before any work is done.
    cache_setting is data.cache: a folder keeps the descriptors there too, anything else uses default_cache_dir().
    """
    from bcc_lightning.utils.errors import UserError

    mode = "off" if mode in (None, False) else str(mode)
    if mode not in AUDIT_MODES:
        raise UserError(f"data.audit must be one of {list(AUDIT_MODES)} (got {mode!r}): warn logs copies found "
                        f"across splits, error stops the run, off skips the check.")
    if mode == "off":
        return None
    cache_dir = Path(str(cache_setting)) if cache_setting not in (None, False, "auto", "null") else None
    result = audit_splits(root, fold=fold, workers=workers, cache_dir=cache_dir)
    summary = {**result.summary(), "verdict": verdict(result)}
    if not summary["clean"]:
        if mode == "error":
            raise UserError(f"{summary['verdict']} This run stopped before training because data.audit=error; run "
                            f"`bcc-audit data.root={result.root}` to see the pairs, or set data.audit=warn to go on "
                            f"(the report then carries a warning).")
        warn(f"LEAKAGE: {summary['verdict']}")
    return summary


def external_copies(external: Sequence[Path], train: Sequence[Path], workers: int | None = None,
                    cache_dir: Path | None = None) -> dict[str, Any]:
    """Copies of training images in an "external" validation set, a common mistake: the summary for metrics.json
    (in the keys the report's banner reads for a test split) and a verdict."""
    from bcc_lightning.data.cache import default_cache_dir

    cache = cache_dir or default_cache_dir()
    query, _ = describe_cached(list(external), cache, workers)
    reference, _ = describe_cached(list(train), cache, workers)
    copied = sorted({m.query_index for m in duplicates.find_copies(query, reference)})
    n = len(external)
    text = (f"{len(copied)} of {n} external images ({100 * len(copied) / max(n, 1):.1f} %) have a near-duplicate in "
            f"the training split: the external metrics are inflated; remove them from the external set."
            if copied else f"No copies of training images among the {n} external images.")
    return {"test_with_copy_in_train": len(copied), "n_test": n, "clean": not copied, "verdict": text,
            "examples": [str(list(external)[i]) for i in copied[:10]]}
