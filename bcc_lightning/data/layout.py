"""The split folder's contract in one place: split names, accepted files, manifest.csv and summary.json.

A data root is `ROOT/{train,val,test}/{B,M}/...` (class folders B/M or benign/malignant, any depth below them), or a
folder written by bcc-prepare, which adds manifest.csv (one row per file) and summary.json (counts and settings;
with folds, the splits come from the manifest's fold column instead of folders).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bcc_lightning.data.labels import ACCEPTED_FOLDER_NAMES, CLASS_NAMES, label_from_folder
from bcc_lightning.utils.errors import UserError

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
# Files a user keeps beside images (notes, tables, settings, Windows' Thumbs.db): skipped with a count, never
# rejected one by one. Any other extension is still tried and rejected if unreadable.
NOT_IMAGE_EXTENSIONS = frozenset({".txt", ".md", ".csv", ".json", ".yaml", ".yml", ".db", ".ini"})
MANIFEST = "manifest.csv"
SUMMARY = "summary.json"
REJECTED = "rejected.csv"
# sha256: of the file as written; source_sha256: of the raw file it came from (equal for byte-identical copies).
MANIFEST_COLUMNS = ("path", "split", "label", "group", "source", "sha256", "augmentation", "fold", "source_sha256")
log = logging.getLogger(__name__)
_TOLD_UNREAD: set[str] = set()  # split folders whose unread files were already reported (scan_split runs often)
HOW_TO_CREATE = (
    "Make it from a raw folder of B/M images with `bcc-prepare raw=RAW out=ROOT`, try the "
    "synthetic demo with `python train.py experiment=demo`, or arrange your images as "
    "ROOT/{train,val,test}/{B,M}/*.png (jpg, tif and bmp work too); then pass `data.root=ROOT`."
)


def is_hidden(name: str) -> bool:
    """Hidden files and folders (.DS_Store, .thumbnails/, editor swap files) are never data."""
    return name.startswith(".")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path.name)


def is_plainly_not_image(name: str) -> bool:
    """Hidden files and notes, tables or settings (NOT_IMAGE_EXTENSIONS) by their name alone."""
    return is_hidden(name) or Path(name).suffix.lower() in NOT_IMAGE_EXTENSIONS


def walk_files(folder: Path, include_hidden: bool = False) -> Iterator[Path]:
    """Every non-hidden file below `folder` (hidden ones too with include_hidden), skipping hidden folders, in a
    stable (sorted) order; links to folders are not followed (no cycles)."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(filenames):
            if include_hidden or not is_hidden(name):
                yield Path(dirpath) / name


def candidate_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files that may be images, in walk_files' order; files skipped as plainly not images, sorted) below `folder`:
    the one walk of bcc-prepare and bcc-predict. A file with an image or unknown extension is a candidate, so that
    one that fails to decode is still reported by name."""
    candidates: list[Path] = []
    skipped: list[Path] = []
    for path in walk_files(folder, include_hidden=True):
        (skipped if is_plainly_not_image(path.name) else candidates).append(path)
    return candidates, sorted(skipped)


def describe_skipped(names: Sequence[str], count: int | None = None) -> str:
    """The one summary line about skipped non-image files, naming the first few ('' when there are none)."""
    count = len(names) if count is None else count
    if not count:
        return ""
    shown = ", ".join(names[:5]) + (f" and {count - min(5, len(names))} more" if count > min(5, len(names)) else "")
    return f"skipped {count} file(s) that are not images (hidden files, notes, tables, settings): {shown}"


def _show(paths: Sequence[Path]) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in paths)
    if not names:
        return "nothing"
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def read_summary(root: str | Path) -> dict[str, Any] | None:
    """summary.json of a prepared root, or None for plain folders."""
    path = Path(root) / SUMMARY
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); it was edited or truncated. Prepare the folder again "
                        f"with bcc-prepare, or delete summary.json to use the folders as plain splits.") from exc


def fold_settings(root: str | Path) -> tuple[int, bool]:
    """(number of folds, whether a test split is held out) of a prepared root; (0, True) without folds."""
    settings = (read_summary(root) or {}).get("settings", {})
    return int(settings.get("folds") or 0), bool(settings.get("holdout_test", True))


def read_manifest(root: str | Path) -> list[dict[str, str]] | None:
    """manifest.csv rows of a prepared root (paths relative to it), or None for plain folders."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def scan_split(root: str | Path, split: str) -> list[tuple[Path, int]]:
    """All (image path, label) pairs of one split, sorted; a clear UserError when the layout is wrong."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"Data root {root.resolve()} does not exist or is not a folder. {HOW_TO_CREATE}")
    split_dir = root / split
    if not split_dir.is_dir() and fold_settings(root)[0]:
        raise UserError(f"{root} is a cross-validation split (folds in manifest.csv) without a '{split}' folder: "
                        f"choose the fold to run with data.fold=k, or sweep them all with -m data.fold=0,1,2,...")
    if not split_dir.is_dir():
        found = [p for p in root.iterdir() if not is_hidden(p.name)]
        raise UserError(
            f"Data root {root} has no '{split}' folder (found: {_show(found)}); expected {root}/train, {root}/val "
            f"and {root}/test, each with class folders {ACCEPTED_FOLDER_NAMES}. {HOW_TO_CREATE}"
        )
    class_dirs = [p for p in split_dir.iterdir() if p.is_dir() and not is_hidden(p.name)]
    unknown = [p for p in class_dirs if label_from_folder(p.name) is None]
    if unknown:
        raise UserError(
            f"{split_dir} has folder(s) {_show(unknown)} that are not class names; class folders must be named "
            f"{ACCEPTED_FOLDER_NAMES}. Rename or move them out of the data root."
        )
    by_label: dict[int, list[Path]] = {0: [], 1: []}
    unread: list[Path] = []
    for class_dir in class_dirs:
        for path in walk_files(class_dir):
            if is_image_file(path):
                by_label[label_from_folder(class_dir.name)].append(path)
            elif not is_plainly_not_image(path.name):
                unread.append(path)
    _tell_unread(split_dir, unread)
    for label, files in by_label.items():
        if not files:
            raise UserError(
                f"{split_dir} has no {CLASS_NAMES[label]} images (class folders found: {_show(class_dirs)}). Each "
                f"split needs both classes with .jpg/.jpeg/.png/.tif/.tiff/.bmp files. {HOW_TO_CREATE}"
            )
    return sorted(((p, label) for label, files in by_label.items() for p in files), key=lambda item: str(item[0]))


def _tell_unread(split_dir: Path, unread: list[Path]) -> None:
    """One warning per split folder for files that may be images but are not read (.webp, .jp2, .svs...): without
    it they would silently be left out of training and evaluation."""
    key = str(split_dir.resolve())
    if not unread or key in _TOLD_UNREAD:
        return
    _TOLD_UNREAD.add(key)
    kinds = ", ".join(f"{ext or 'no extension'} x{n}" for ext, n in Counter(p.suffix.lower() for p in unread).items())
    log.warning("%s: %d file(s) left out, in formats this tool does not read (%s), e.g. %s. Only %s files are read: "
                "convert them (for whole-slide images, cut tiles first) if they belong to the data.", split_dir,
                len(unread), kinds, unread[0], "/".join(sorted(IMAGE_EXTENSIONS)))


def fold_samples(root: str | Path, split: str, fold: int) -> list[tuple[Path, int]]:
    """(path, label) of one split of cross-validation run `fold`, from bcc-prepare's manifest.csv (no copying).

    With a held-out test split: val = fold k, train = the other folds, test = the test split. Without one:
    test = fold k, val = fold k+1 (mod K), train = the rest. Augmented copies only ever serve as training data.
    """
    root = Path(root)
    rows = read_manifest(root)
    if rows is None or read_summary(root) is None:
        raise UserError(f"data.fold={fold} needs fold assignments, but {root} has no manifest.csv/summary.json. "
                        f"Make them with `bcc-prepare raw=RAW out={root} folds=5`.")
    folds, holdout = fold_settings(root)
    if folds < 2:
        raise UserError(f"{root} was prepared without folds (summary.json: folds={folds}); drop data.fold, or "
                        f"prepare again with folds=K.")
    if not 0 <= fold < folds:
        raise UserError(f"data.fold={fold} is out of range: {root} has {folds} folds (0..{folds - 1}).")
    if holdout:
        roles = {"val": {fold}, "test": set(), "train": set(range(folds)) - {fold}}
    else:
        roles = {"test": {fold}, "val": {(fold + 1) % folds}, "train": set(range(folds)) - {fold, (fold + 1) % folds}}
    samples = []
    for row in rows:
        original = row["augmentation"] == "none"
        in_fold = row.get("fold", "") != "" and int(row["fold"]) in roles[split]
        if split == "test" and holdout:
            chosen = row["split"] == "test" and original
        else:
            chosen = in_fold and (original or split == "train")
        if chosen:
            samples.append((root / row["path"], label_from_folder(row["label"])))
    for label in (0, 1):
        if not any(lab == label for _, lab in samples):
            raise UserError(f"Fold {fold} of {root} has no {CLASS_NAMES[label]} images in its {split} split; "
                            f"prepare with fewer folds or more images.")
    return sorted(samples, key=lambda item: str(item[0]))


def label_of_path(rel_parts: Sequence[str]) -> int | None:
    """The label of the nearest enclosing class folder (BreakHis: .../benign/SOB/adenosis/<slide>/40X/x.png)."""
    for part in reversed(rel_parts[:-1]):
        label = label_from_folder(part)
        if label is not None:
            return label
    return None


def scan_labelled(root: str | Path) -> list[tuple[Path, int]]:
    """(path, label) of every image below `root` whose nearest enclosing folder named B/M (benign/malignant) gives
    its label, at any depth and without the split layout: another lab's folder, as it comes."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root} does not exist or is not a folder. Pass a folder with B/M (or benign/malignant) "
                        f"class folders at any depth.")
    samples = [(p, label) for p in walk_files(root) if is_image_file(p)
               for label in [label_of_path(p.relative_to(root).parts)] if label is not None]
    for label in (0, 1):
        if not any(lab == label for _, lab in samples):
            raise UserError(f"{root} has no {CLASS_NAMES[label]} images under a class folder "
                            f"({ACCEPTED_FOLDER_NAMES}); a validation set needs both classes.")
    return sorted(samples, key=lambda item: str(item[0]))


def group_of_paths(root: str | Path) -> dict[str, str]:
    """{path relative to root: group} from the manifest (empty for plain folders)."""
    return {row["path"]: row["group"] for row in read_manifest(root) or [] if row.get("group")}
