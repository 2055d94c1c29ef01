"""Pass 1 of bcc-prepare: find labelled image files, hash them, drop identical copies, assign groups."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcc_lightning.data.groups import Grouping, infer_groups
from bcc_lightning.data.labels import ACCEPTED_FOLDER_NAMES, CLASS_NAMES
from bcc_lightning.data.layout import IMAGE_EXTENSIONS, candidate_files, is_hidden, label_of_path
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


def scan_raw(raw: Path, rejected: list[tuple[str, str]], skipped: list[Path] | None = None) -> list[Source]:
    """Every labelled image file under RAW with its hash; files plainly not images (hidden files, notes, tables:
    layout.candidate_files) go to `skipped`, everything else to `rejected`."""
    sources: list[Source] = []
    unlabelled: list[str] = []
    candidates, passed_over = candidate_files(raw)
    if skipped is not None:
        skipped.extend(passed_over)
    for path in candidates:
        rel = path.relative_to(raw).as_posix()
        if path.is_symlink() and not path.is_file():
            rejected.append((rel, "broken symbolic link"))
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            rejected.append((rel, f"not an image file this tool reads (extension {path.suffix or 'none'!r}; "
                                  f"convert it to PNG, JPEG or TIFF if it is one)"))
            continue
        label = label_of_path(path.relative_to(raw).parts)
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


def assign_groups(sources: list[Source], settings: PrepareSettings, rejected: list[tuple[str, str]],
                  raw: Path | None = None) -> tuple[list[Source], Grouping]:
    """Group ids inferred (auto: data/groups.py), from file names (breakhis, pattern) or one group per file (image,
    content: copies join later); returns the sources kept and what the grouping is, for the summary."""
    if settings.group == "auto":
        grouping = infer_groups([s.rel for s in sources], raw, min_groups=settings.min_groups())
        for s in sources:
            s.group = grouping.groups[s.rel]
        return sources, grouping
    if settings.group in ("image", "content"):
        # rel includes any train/val/test folder of an already split raw tree, but only as a unique id: it never
        # joins two files, so the old split has no say in the new one.
        for s in sources:
            s.group = s.rel
        unit = "image" if settings.group == "image" else "copies"
        return sources, Grouping({s.rel: s.group for s in sources}, settings.group, unit, f"group={settings.group}")
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
        examples = ", ".join(s.path.name for s in sources[:3])
        raise UserError(f"No file name matched the group pattern {pattern.pattern!r} (for example: {examples}); check "
                        f"group/group_pattern: the pattern's first (...) group must capture the patient or slide id "
                        f"in the file name, or use group=auto.")
    groups = {s.rel: s.group for s in kept}
    if settings.group == "breakhis":
        return kept, Grouping(groups, "breakhis", "patient", "BreakHis names, group=breakhis")
    return kept, Grouping(groups, "pattern", "group", f"group_pattern {pattern.pattern!r}")


def _copies_single_threaded(described: Any, find_copies: Callable[[Any], list]) -> list:
    """find_copies with torch's intra-op pool off: pass 2 forks its writers afterwards, and a child forked after
    OpenMP threads ran in the parent hangs as soon as it uses torch itself (the augmentations do)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return find_copies(described)
    finally:
        torch.set_num_threads(threads)


def merge_near_duplicates(sources: list[Source], settings: PrepareSettings,
                          progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Merge every cluster of near-duplicate sources (copies under any similarity or affine map, and overlapping views
    sharing at least settings.min_overlap of either image) into one group.

    Union-find over both relations, the group from `group=` and the copy clusters, so a copy that links two patients'
    groups joins them too. Each source is decoded once (in settings.workers processes). Returns the summary's
    near_duplicate_clusters entry; clusters with both labels are kept in one group and listed there.
    """
    from bcc_lightning.data.duplicates import clusters, describe_files, find_copies

    workers = settings.workers if settings.workers > 1 else 0
    described = describe_files([s.path for s in sources], workers=workers, progress=progress)
    index = {path: i for i, path in enumerate(described.paths)}
    rows = [index.get(str(s.path)) for s in sources]  # None: unreadable here; pass 2 rejects it
    matches = _copies_single_threaded(described, lambda d: find_copies(d, min_overlap=settings.min_overlap))
    labels = clusters(len(described), matches)
    members: dict[int, list[Source]] = defaultdict(list)
    for s, row in zip(sources, rows):
        if row is not None:
            members[labels[row]].append(s)
    found = [m for m in members.values() if len(m) > 1]

    parent: dict[str, str] = {s.group: s.group for s in sources}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for cluster in found:
        roots = sorted({find(s.group) for s in cluster})
        for other in roots[1:]:
            parent[other] = roots[0]  # the smallest name wins: stable, readable group ids
    for s in sources:
        s.group = find(s.group)
    mixed = [sorted(s.rel for s in c) for c in found if len({s.label for s in c}) > 1]
    sizes = sorted((len(c) for c in found), reverse=True)
    return {"count": len(found), "largest": sizes[0] if sizes else 0, "images_in_clusters": sum(sizes),
            "sizes": {str(k): v for k, v in sorted(Counter(sizes).items())}, "mixed_label": mixed[:50],
            "mixed_label_count": len(mixed),
            # pairs behind the clusters: copies (one image wholly within the other) and overlapping views
            "copy_pairs": sum(1 for m in matches if getattr(m, "kind", "copy") == "copy"),
            "overlap_pairs": sum(1 for m in matches if getattr(m, "kind", "copy") == "overlap"),
            # near-uniform images (background, pen marks) are never matched, so never merged: reported apart
            "blank": sorted(s.rel for s, row in zip(sources, rows) if row is not None and described.blank[row])[:50],
            "blank_count": int(sum(bool(described.blank[row]) for row in rows if row is not None)),
            "unreadable": len(described.errors)}
