"""Pass 1 of bcc-prepare: find labelled image files, hash them, drop identical copies, assign groups."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bcc_lightning.data.labels import ACCEPTED_FOLDER_NAMES, CLASS_NAMES, label_from_folder
from bcc_lightning.data.layout import IMAGE_EXTENSIONS, is_hidden, walk_files
from bcc_lightning.data.prepare.settings import BREAKHIS_PATTERN, PrepareSettings
from bcc_lightning.utils.atomic_io import sha256_file
from bcc_lightning.utils.errors import UserError


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


def _label_of(rel_parts: Sequence[str]) -> int | None:
    """The label of the nearest enclosing class folder (BreakHis: .../benign/SOB/adenosis/<slide>/40X/x.png)."""
    for part in reversed(rel_parts[:-1]):
        label = label_from_folder(part)
        if label is not None:
            return label
    return None


def scan_raw(raw: Path, rejected: list[tuple[str, str]]) -> list[Source]:
    """Every labelled image file under RAW with its hash; everything else goes to `rejected`."""
    sources: list[Source] = []
    unlabelled: list[str] = []
    for path in walk_files(raw):  # the data module's rule: hidden files and folders are not data
        rel = path.relative_to(raw).as_posix()
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
        top = sorted(p.name + ("/" if p.is_dir() else "") for p in raw.iterdir() if not is_hidden(p.name))
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


