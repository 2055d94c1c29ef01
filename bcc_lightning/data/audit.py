"""Leakage audit of a split folder: near-duplicate copies of one image in two splits (rotated, flipped, grayscale...).

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

from bcc_lightning.data import duplicates
from bcc_lightning.data.cache import default_cache_dir
from bcc_lightning.data.duplicates import DescriptorSet, describe_files, find_copies
from bcc_lightning.data.labels import SHORT_NAMES
from bcc_lightning.data.layout import SPLITS, fold_samples, fold_settings, read_manifest, scan_split
from bcc_lightning.utils.atomic_io import atomic_write, write_json, write_text

VERSION = 1  # bump when the audit's use of descriptors changes, so old cache files are not reused
LEAKAGE_COLUMNS = ("path", "split", "copy_of", "copy_split", "transform", "score")
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

    def summary(self) -> dict[str, Any]:
        """Counts for metrics.json and the report banner."""
        found = {key: 0 for _, _, key in CHECKS}
        for pair, key in self.keys.items():
            found[key] += self.counts.get(pair, {}).get("total", 0)
        totals = {f"n_{s}": n for s, n in self.sizes.items()}
        return {**found, **totals, "copies_across_splits": len(self.rows), "clean": not self.rows,
                "unreadable": len(self.errors), "root": self.root, "fold": self.fold}


def _describe_key(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256(json.dumps([VERSION, duplicates._GRID, duplicates.MATCH_THRESHOLD]).encode())
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
                 cache_dir: str | Path | None | bool = None, progress: Progress | None = None) -> AuditResult:
    """Find images of val/test that have a near-duplicate copy in train (or test in val).

    fold: one cross-validation run of a prepared root; None audits the plain splits, or every fold of a root with
    folds. cache_dir: None = default_cache_dir(); False = no descriptor cache.
    """
    root = Path(root).expanduser()
    cache = default_cache_dir() if cache_dir is None else (None if cache_dir is False else Path(str(cache_dir)))
    parts, checks = _parts(root, fold)
    sets: dict[str, DescriptorSet] = {}
    labels: dict[str, int] = {}
    result = AuditResult(root=str(root.resolve()), fold=fold, sizes={}, labels=labels)
    for name, samples in parts.items():
        if ":" in name:
            continue  # a subset of a fold: sliced below, never described twice
        paths = [p for p, _ in samples]
        labels.update((str(p), lab) for p, lab in samples)
        tick = None if progress is None else (lambda done, total, name=name: progress(name, done, total))
        sets[name], hit = describe_cached(paths, cache, workers, tick)
        result.cached += hit
        result.errors.update(sets[name].errors)
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
        for match in find_copies(query, reference):
            if match.query_index not in best or match.score > best[match.query_index].score:
                best[match.query_index] = match
        ref_split = _split_of(reference, sets, ref_names)
        for qi, match in sorted(best.items()):
            path = query.paths[qi]
            copy_of = reference.paths[match.reference_index]
            counts[SHORT_NAMES[labels.get(path, 0)]] += 1
            counts["total"] += 1
            result.rows.append({"path": _rel(path, root), "split": query_name.replace(":val", ""),
                                "copy_of": _rel(copy_of, root), "copy_split": ref_split[match.reference_index],
                                "transform": match.transform, "score": round(min(match.score, 1.0), 4),
                                "label": labels.get(path, 0), "copy_label": labels.get(copy_of, 0)})
    return result


def _subset(s: DescriptorSet, rows: list[int]) -> DescriptorSet:
    return DescriptorSet(paths=[s.paths[i] for i in rows], vectors=s.vectors[rows], coeffs=s.coeffs[rows],
                         saturation=s.saturation[rows], sizes=s.sizes[rows], tone=s.tone[rows])


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
    """One paragraph: what crosses splits, what it means, and how to re-split."""
    s = result.summary()
    total = sum(result.sizes.values())
    unreadable = f" {s['unreadable']} file(s) could not be read (listed in leakage.md)." if s["unreadable"] else ""
    if s["clean"]:
        return f"No copies across splits among {total:,} images.{unreadable}"
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
    return (f"{'; '.join(parts)}: {inflated} from this folder are inflated. Re-split with: "
            f"bcc-prepare raw={result.root} out=NEW group=content{unreadable}")


def _pairs_png(path: Path, result: AuditResult, root: Path, limit: int = 8) -> bool:
    """Side-by-side grid of the closest pairs; False when there is nothing to show or no image can be read."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from bcc_lightning.data.imageio import ImageDecodeError, load_rgb

    chosen = sorted(result.rows, key=lambda r: -r["score"])[:limit]
    if not chosen:
        return False
    fig, axes = plt.subplots(len(chosen), 2, figsize=(6, 2.6 * len(chosen)), squeeze=False)
    for row, (left, right) in zip(chosen, axes):
        for ax, rel, split in ((left, row["path"], row["split"]), (right, row["copy_of"], row["copy_split"])):
            try:
                ax.imshow(load_rgb(root / rel))
            except ImageDecodeError:
                pass
            ax.set_title(f"{split}: {Path(rel).name[:28]}", fontsize=7)
            ax.axis("off")
        left.text(0, -0.12, f"{row['transform']} (score {row['score']:.2f})", transform=left.transAxes, fontsize=7,
                  va="top")
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
    lines = [f"# Leakage audit of `{result.root}`" + (f" (fold {result.fold})" if result.fold is not None else ""),
             "", verdict(result), "", "Images per split: " + ", ".join(f"{k} {v:,}" for k, v in result.sizes.items()),
             "", "| query -> reference | benign | malignant | total |", "|---|---:|---:|---:|"]
    for pair, c in result.counts.items():
        lines.append(f"| {pair} | {c['B']} | {c['M']} | {c['total']} |")
    mixed = [r for r in result.rows if r["label"] != r["copy_label"]]
    if mixed:
        lines += ["", f"{len(mixed)} copies carry the other label than their original (label noise): see "
                      "leakage.csv."]
    if has_png:
        lines += ["", "Closest pairs (left: the image, right: its copy in the other split):", "",
                  "![closest pairs](leakage_pairs.png)"]
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
                            f"`bcc-audit root={result.root}` to see the pairs, or set data.audit=warn to go on (the "
                            f"report then carries a warning).")
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
