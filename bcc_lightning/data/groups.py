"""Which images come from one patient (or slide): inferred groups for bcc-prepare's group=auto and the audit.

Rules, in order (the first that says something wins; manifest groups that only record copies are joined in):
1. a manifest.csv written by bcc-prepare whose groups were patients or slides (group=breakhis, pattern or auto);
2. a known name scheme of a public pathology set, on the file name or a folder name:
   BreakHis (`SOB_B_TA-14-3411F-100-009.png` and its folder `SOB_B_TA_14-3411F` -> patient `14-3411F`), TCGA barcodes
   (`TCGA-A2-A0T2-01Z-00-DX1...` -> patient `TCGA-A2-A0T2`), CAMELYON17 (`patient_004_node_4` -> `patient_004`), the
   IDC patches (`10253_idx5_x1351_y1101_class0.png` -> patient `10253`) and BRACS (`BRACS_1003_N_1.png` -> slide
   `BRACS_1003`);
3. folders: the deepest level below the class folder whose folders look like units (patients, slides: each name
   used once, not `40X`/`100X` repeated under every patient) and hold several images, with enough of them per class
   to split;
4. one group per image, said plainly: if several images come from one patient, such a split leaks.

`group_overlap` applies the same inference to a split folder made elsewhere and reports groups on both sides.
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcc_lightning.data.labels import SHORT_NAMES, label_from_folder
from bcc_lightning.data.layout import SPLITS, fold_settings, read_manifest, read_summary, scan_split

# Split folder names are never grouping units: a folder split elsewhere has the same patient folder under each split.
_SPLIT_NAMES = frozenset(SPLITS) | {"validation", "valid"}
_NOT_ALNUM_BEFORE, _NOT_ALNUM_AFTER = r"(?<![A-Za-z0-9])", r"(?![A-Za-z0-9])"
# Folder names that sort images by how they were taken, never by whom: magnifications (BreakHis' 40X..400X) and
# generic containers. Under B/ and M/ alone they would otherwise look like four "patients" per class.
_CATEGORY_FOLDER = re.compile(r"^(\d+(\.\d+)?[xX]|images?|imgs?|tiles?|patches|crops?|rois?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Scheme:
    """A public data set's naming: the first capture group of `file` (on the file name) or `folder` (on a folder
    name) is the patient's or slide's id."""

    key: str
    label: str
    unit: str
    file: str | None
    folder: str | None = None

    def match(self, parts: Sequence[str]) -> str | None:
        """The id from the file name (last part, without its extension), else from the nearest folder that matches."""
        file, folder = _compiled(self.file), _compiled(self.folder)
        if file and (m := file.search(parts[-1].rsplit(".", 1)[0])):
            return m.group(1)
        if folder:
            for part in reversed(parts[:-1]):
                if m := folder.search(part):
                    return m.group(1)
        return None


@functools.cache
def _compiled(pattern: str | None) -> re.Pattern | None:
    return None if pattern is None else re.compile(pattern)


SCHEMES = (
    Scheme("breakhis", "BreakHis names", "patient",
           _NOT_ALNUM_BEFORE + r"SOB_[BM]_[A-Za-z]+-(\d+-[A-Za-z0-9]+)-\d+-\d+",
           r"^SOB_[BM]_[A-Za-z]+_(\d+-[A-Za-z0-9]+)$"),
    Scheme("tcga", "TCGA barcodes", "patient", _NOT_ALNUM_BEFORE + r"(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})"
           + _NOT_ALNUM_AFTER, _NOT_ALNUM_BEFORE + r"(TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4})" + _NOT_ALNUM_AFTER),
    Scheme("camelyon17", "CAMELYON17 names", "patient", _NOT_ALNUM_BEFORE + r"(patient_\d+)_node_\d+",
           _NOT_ALNUM_BEFORE + r"(patient_\d+)_node_\d+"),
    Scheme("idc", "IDC patch names", "patient", _NOT_ALNUM_BEFORE + r"(\d+)_idx5_x\d+_y\d+_class[01]"),
    Scheme("bracs", "BRACS names", "slide", _NOT_ALNUM_BEFORE + r"(BRACS_\d+)_[A-Za-z]+_\d+", r"^(BRACS_\d+)$"),
)


@dataclass
class Grouping:
    """Group id per image path (relative to the root, POSIX), the rule that made them and why."""

    groups: dict[str, str]
    rule: str  # manifest | breakhis | tcga | camelyon17 | idc | bracs | folder | image | pattern | content
    unit: str  # patient | slide | folder | image | copies
    source: str  # in words: "BreakHis names", "manifest.csv", "folders such as 'p07'"
    evidence: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(set(self.groups.values()))

    @property
    def by_image(self) -> bool:
        """True when nothing says which images share a patient: a split can then leak unseen."""
        return self.unit in ("image", "copies")

    def text(self, count: int | None = None) -> str:
        """One line for prepare's table and the audit: what the groups are, how many (`count` when fewer or more
        reached the output than were inferred), and what that guarantees."""
        n = self.count if count is None else count
        if self.unit == "group":
            return f"grouped by {self.source}: {n:,} groups"
        if self.by_image:
            what = "image" if self.unit == "image" else "image and its copies"
            return (f"grouped by {what} ({self.source}): {n:,} groups; if several images come from one patient, "
                    f"this split leaks")
        how = "from" if self.rule == "manifest" else "inferred from"
        return f"grouped by {self.unit} ({how} {self.source}): {n:,} groups"

    def to_dict(self, count: int | None = None) -> dict[str, Any]:
        return {"rule": self.rule, "unit": self.unit, "source": self.source,
                "groups": self.count if count is None else count, "text": self.text(count),
                "evidence": list(self.evidence)}


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the smaller id names the group: stable, readable


def _class_index(parts: Sequence[str]) -> int | None:
    """Index of the nearest enclosing class folder (B/M, benign/malignant), as layout.label_of_path finds it."""
    for i in range(len(parts) - 2, -1, -1):
        if label_from_folder(parts[i]) is not None:
            return i
    return None


def _below_class(parts: Sequence[str]) -> tuple[int | None, tuple[str, ...]]:
    """(label, the folders between the class folder and the file)."""
    i = _class_index(parts)
    if i is None:
        return None, tuple(p for p in parts[:-1] if p.lower() not in _SPLIT_NAMES)
    return label_from_folder(parts[i]), tuple(parts[i + 1:-1])


def _by_scheme(rels: Sequence[str]) -> tuple[Scheme | None, dict[str, str]]:
    """The scheme that names the most images, and the id it gives each of them."""
    best: tuple[Scheme | None, dict[str, str]] = (None, {})
    split = [(rel, rel.split("/")) for rel in rels]
    for scheme in SCHEMES:
        found = {}
        for rel, parts in split:
            gid = scheme.match(parts)
            if gid:
                found[rel] = gid
        if len(found) > len(best[1]):
            best = (scheme, found)
    return best


def _by_folder(rels: Sequence[str], min_groups: int) -> tuple[dict[str, str], str, list[str]]:
    """Group per folder at the deepest level below the class folder that looks like patients or slides.

    Returns ({rel: group}, a description of the level, notes on the levels not used).
    """
    info = {rel: _below_class(rel.split("/")) for rel in rels}
    depth = max((len(p) for _, p in info.values()), default=0)
    notes: list[str] = []
    for d in range(depth - 1, -1, -1):
        deep = {rel: (lab, p) for rel, (lab, p) in info.items() if len(p) > d}
        if len(deep) * 2 < len(rels):
            continue  # most images are not this deep: not a level of this folder's layout
        generic = sorted({p[d] for _, p in deep.values() if _CATEGORY_FOLDER.match(p[d])})
        if generic:
            notes.append(f"level {d + 1} below the class folder holds {', '.join(map(repr, generic[:4]))}: "
                         f"magnifications or containers, not patients")
            continue
        # A unit is its path without magnification/container folders: B/40X/p1 and B/100X/p1 are one patient.
        covered = {rel: (lab, tuple(x for x in p[:d + 1] if not _CATEGORY_FOLDER.match(x)))
                   for rel, (lab, p) in deep.items()}
        units = set(covered.values())
        names = {u[1][-1] for u in units}
        sizes = Counter(covered.values())
        per_class = Counter(lab for lab, _ in units)
        level = f"level {d + 1} below the class folder"
        if len(names) * 2 < len(units):
            shown = ", ".join(repr(n) for n in sorted(names)[:4])
            notes.append(f"{level} repeats a few names under many folders ({shown}): a category, not a patient")
            continue
        if max(sizes.values()) < 2:
            continue  # one image per folder says nothing more than one group per image
        short = [f"{SHORT_NAMES[lab] if lab is not None else '?'} {per_class.get(lab, 0)}" for lab in (0, 1)]
        if any(n < min_groups for n in per_class.values()):
            notes.append(f"{level} gives too few folders to split ({', '.join(short)}; at least {min_groups} per "
                         f"class needed)")
            continue
        groups = {}
        for rel in rels:
            if rel in covered:
                lab, path = covered[rel]
                groups[rel] = "/".join([SHORT_NAMES[lab] if lab is not None else "?", *path])
        examples = ", ".join(repr(n) for n in sorted(names)[:3])
        return groups, f"folders at {level}, e.g. {examples}", notes
    return {}, "", notes


def _manifest_groups(root: Path | None) -> tuple[dict[str, str], dict[str, str], str | None, str]:
    """({path: group} and {path: raw source path} from root/manifest.csv, the unit it records or None when it
    records images or copies only, its source in words)."""
    if root is None:
        return {}, {}, None, ""
    rows = read_manifest(root)
    if not rows or "group" not in rows[0]:
        return {}, {}, None, ""
    summary = read_summary(root) or {}
    recorded = summary.get("grouping") or {}
    unit = recorded.get("unit")
    if unit is None:  # written before group=auto: the settings say what the groups were
        unit = {"breakhis": "patient", "pattern": "group"}.get(str(summary.get("settings", {}).get("group")), "image")
    groups = {row["path"]: row["group"] for row in rows if row.get("group")}
    sources = {row["path"]: row["source"] for row in rows if row.get("source")}
    said = recorded.get("source")
    source = "manifest.csv" + (f", where bcc-prepare inferred them from {said}" if said else "")
    return groups, sources, None if unit in ("image", "copies") else unit, source


def infer_groups(rels: Sequence[str], root: str | Path | None = None, min_groups: int = 3) -> Grouping:
    """Groups for images at `rels` (POSIX paths relative to `root`); root is only read for manifest.csv.

    min_groups: folders are used only when each class has at least this many of them (a split needs one per part).
    """
    rels = list(rels)
    root = None if root is None else Path(root)
    evidence: list[str] = []
    manifest, raw_paths, manifest_unit, manifest_source = _manifest_groups(root)
    known = {rel: manifest[rel] for rel in rels if rel in manifest}
    if manifest_unit and len(known) == len(rels):
        return Grouping(known, "manifest", manifest_unit, manifest_source,
                        [f"{len(known):,} images found in manifest.csv"])

    union = _Union()
    rels_set = set(rels)
    # Names and folders are read from the raw path a manifest records (prepare flattens folders into the file
    # name), else from the path itself; augmented copies share their source's raw path, hence its group.
    views = {rel: raw_paths.get(rel) or rel for rel in rels}
    unique = sorted(set(views.values()))
    scheme, ids = _by_scheme(unique)
    rest = [view for view in unique if view not in ids]
    folders, level, notes = _by_folder(rest, min_groups) if rest else ({}, "", [])
    evidence += notes
    for rel in rels:
        union.find(rel)
        view = views[rel]
        if view in ids and scheme:
            union.join(rel, f"{scheme.key}:{ids[view]}")
        elif view in folders:
            union.join(rel, f"folder:{folders[view]}")
    if known:  # copies recorded by an earlier prepare stay together whatever else is inferred
        for rel, gid in known.items():
            union.join(rel, f"manifest:{gid}")
    # Readable ids: the scheme's id, else the folder path, else the manifest's group, else the image's own path.
    tokens: dict[str, list[str]] = defaultdict(list)
    for token in list(union.parent):
        tokens[union.find(token)].append(token)
    groups = {}
    for members in tokens.values():
        named = sorted(t for t in members if ":" in t and t not in rels_set)
        rank = {"folder": 1, "manifest": 2}
        named.sort(key=lambda t: rank.get(t.split(":", 1)[0], 0))
        name = named[0].split(":", 1)[1] if named else min(members)
        for token in members:
            if token in rels_set:
                groups[token] = name
    named = sum(1 for rel in rels if views[rel] in ids)
    in_folders = sum(1 for rel in rels if views[rel] in folders)
    # The rule named is the one that covers most images (at least half); a stray match never names the whole folder.
    if scheme and named * 2 >= len(rels):
        others = len(rels) - named
        evidence.insert(0, f"{named:,} of {len(rels):,} images named by {scheme.label}"
                        + (f"; {others:,} others grouped by {level or 'image'}" if others else ""))
        unit, rule, source = scheme.unit, scheme.key, scheme.label
    elif folders and (named + in_folders) * 2 >= len(rels):
        rest_n = len(rels) - in_folders - named
        evidence.insert(0, f"{in_folders:,} of {len(rels):,} images in {level}"
                        + (f"; {named:,} named by {scheme.label}" if named and scheme else "")
                        + (f"; {rest_n:,} others grouped by image" if rest_n else ""))
        unit, rule, source = "folder", "folder", level
    elif named or in_folders:
        evidence.insert(0, f"only {named + in_folders:,} of {len(rels):,} images carry a patient or slide (known "
                        f"names or folders); the others are one group each")
        unit, rule, source = "image", "image", "too few images say who the patient is"
    else:
        evidence.insert(0, "no manifest groups, no known name scheme (" + ", ".join(s.label for s in SCHEMES)
                        + ") and no patient or slide folders below the class folders")
        unit, rule, source = "image", "image", "nothing suggests more"
    return Grouping(groups, rule, unit, source, evidence)


# ------------------------------------------------------------------------------------ groups across splits

def _split_images(root: Path, fold: int | None) -> dict[str, str]:
    """{path relative to root: the split (or fold) it is used in}: from the manifest when it has folds, else from
    the split folders."""
    rows = read_manifest(root)
    folds, holdout = fold_settings(root)
    if rows and folds:
        where = {}
        for row in rows:
            if row.get("fold", "") != "":
                where[row["path"]] = f"fold{row['fold']}"
            elif row["split"] == "test" and holdout:
                where[row["path"]] = "test"
        if fold is not None:  # one run: its validation fold against its training folds (and test)
            roles = {f"fold{fold}": "val"} if holdout else {f"fold{fold}": "test", f"fold{(fold + 1) % folds}": "val"}
            where = {p: roles.get(s, "test" if s == "test" else "train") for p, s in where.items()}
        return where
    where = {}
    for split in SPLITS:
        if (root / split).is_dir():
            for path, _label in scan_split(root, split):
                where[path.relative_to(root).as_posix()] = split
    return where


def group_overlap(root: str | Path, fold: int | None = None) -> dict[str, Any]:
    """Groups (patients, slides) with images in two splits of a split folder, from its manifest or inferred.

    Returns a JSON-able summary: the grouping, `crossing` (groups in more than one split or fold), per pair of splits
    the groups shared and the query images whose group is also in the reference split, `clean` and a `verdict`.
    """
    root = Path(root).expanduser()
    where = _split_images(root, fold)
    grouping = infer_groups(sorted(where), root, min_groups=1)
    splits_of: dict[str, set[str]] = defaultdict(set)
    for rel, split in where.items():
        splits_of[grouping.groups[rel]].add(split)
    crossing = sorted(g for g, s in splits_of.items() if len(s) > 1)
    names = sorted({s for s in where.values()}, key=lambda s: (SPLITS.index(s) if s in SPLITS else -1, s))
    pairs: dict[str, dict[str, int]] = {}
    for i, query in enumerate(names):
        for reference in names[:i] if query in ("val", "test") else names[i + 1:] if query.startswith("fold") else []:
            shared = [g for g in crossing if {query, reference} <= splits_of[g]]
            if shared:
                shared_set = set(shared)
                images = sum(1 for rel, s in where.items() if s == query and grouping.groups[rel] in shared_set)
                pairs[f"{query}->{reference}"] = {"groups": len(shared), "images": images}
    examples = [{"group": g, "splits": sorted(splits_of[g])} for g in crossing[:20]]
    result = {**grouping.to_dict(), "crossing": len(crossing), "pairs": pairs, "examples": examples,
              "clean": not crossing, "images": len(where)}
    result["verdict"] = overlap_verdict(result, root)
    return result


def overlap_verdict(overlap: dict[str, Any], root: str | Path) -> str:
    """One paragraph on the groups found on both sides, or what the grouping could and could not check."""
    unit = overlap["unit"]
    if overlap["unit"] in ("image", "copies"):
        return ("Patients not checked: nothing here says which images share a patient (no manifest groups, no known "
                "name scheme, no patient or slide folders); if several images come from one patient, patients may "
                "be on both sides of this split.")
    if overlap["clean"]:
        return f"Patients: no {unit} on both sides ({overlap['text']})."
    shown = "; ".join(f"{pair}: {v['groups']} {unit}(s), {v['images']} {pair.split('->')[0]} images"
                      for pair, v in overlap["pairs"].items())
    examples = ", ".join(e["group"] for e in overlap["examples"][:5])
    return (f"Patients on both sides: {overlap['crossing']} of {overlap['groups']} {unit}s ({overlap['source']}) have "
            f"images in more than one split ({shown}; e.g. {examples}): metrics from this folder are inflated, since "
            f"the model has seen these {unit}s. Re-split with: bcc-prepare raw={Path(root)} out=NEW (group=auto keeps "
            f"each {unit} in one split).")


def overlap_gate(mode: Any, root: str | Path, fold: int | None,
                 warn: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """train/eval's data.audit=warn|error for groups across splits: the summary (None when off)."""
    from bcc_lightning.utils.errors import UserError

    mode = "off" if mode in (None, False) else str(mode)
    if mode == "off":
        return None
    overlap = group_overlap(root, fold)
    if not overlap["clean"]:
        if mode == "error":
            raise UserError(f"{overlap['verdict']} This run stopped before training because data.audit=error; set "
                            f"data.audit=warn to go on (the report then carries a warning).")
        warn(f"LEAKAGE: {overlap['verdict']}")
    return overlap


def with_group_overlap(leakage: dict[str, Any] | None, mode: Any, root: str | Path, fold: int | None,
                       warn: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """The copy audit's summary (audit_gate's) extended with the groups across splits (`groups`), for train/eval.

    A patient on both sides makes the run unclean like a copy does; data.audit=error stops the run for either.
    """
    overlap = overlap_gate(mode, root, fold, warn)
    if leakage is None or overlap is None:
        return leakage
    # The verdict names both checks, so a card or report that shows it says what was and was not checked.
    merged = {**leakage, "groups": overlap, "verdict": f"{leakage['verdict']} {overlap['verdict']}"}
    if not overlap["clean"]:
        merged["clean"] = False
    return merged


def write_overlap(outdir: str | Path, overlap: dict[str, Any]) -> Path:
    """groups.json beside the audit's leakage.* files, and a "Patients" section appended to leakage.md."""
    from bcc_lightning.utils.atomic_io import write_json, write_text

    outdir = Path(outdir)
    md = outdir / "leakage.md"
    if md.is_file():
        lines = ["", "## Patients across splits", "", overlap["verdict"], ""]
        lines += [f"- {line}" for line in overlap.get("evidence", [])]
        if overlap["pairs"]:
            lines += ["", "| query -> reference | groups shared | query images in them |", "|---|---:|---:|"]
            lines += [f"| {pair} | {v['groups']} | {v['images']} |" for pair, v in overlap["pairs"].items()]
        write_text(md, md.read_text(encoding="utf-8") + "\n".join(lines) + "\n")
    return write_json(outdir / "groups.json", overlap)
