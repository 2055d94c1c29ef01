"""summary.json and the printed table of a prepared folder."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bcc_lightning.data.groups import Grouping
from bcc_lightning.data.labels import CLASS_NAMES, SHORT_NAMES
from bcc_lightning.data.layout import SPLITS, describe_skipped
from bcc_lightning.data.prepare.settings import PrepareSettings
from bcc_lightning.utils.errors import UserError


def check_written(summary: dict[str, Any]) -> None:
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


def summarise(manifest: list[list[str]], rejected: list[tuple[str, str]], dup_counts: dict[str, int],
             split_info: dict[str, Any], settings: PrepareSettings, n_sources: int, elapsed: float,
             near: dict[str, Any] | None = None, grouping: Grouping | None = None,
             skipped: Sequence[str] = ()) -> dict[str, Any]:
    """summary.json's body; `near` is the near-duplicate clustering (None when dedup_near=false), `grouping` what
    the groups are (data/groups.py), counted as written (copies may have joined groups, pass 2 may reject files);
    `skipped` the raw files passed over as plainly not images (layout.candidate_files)."""
    counts = {split: {cls: 0 for cls in SHORT_NAMES} for split in SPLITS}
    originals = {split: {cls: 0 for cls in SHORT_NAMES} for split in SPLITS}
    groups: dict[str, set[str]] = {split: set() for split in SPLITS}
    group_splits: dict[str, set[str]] = defaultdict(set)
    folds: dict[str, dict[str, Any]] = {str(k): {"B": 0, "M": 0, "groups": set()} for k in range(settings.folds)}
    for _path, split, label, group, _source, _sha, augmentation, fold, _source_sha in manifest:
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
    described = None if grouping is None else grouping.to_dict(len(group_splits))
    leaks = _copies_outside(manifest) if contaminated else None
    return {
        "protocol": (f"CONTAMINATED: augmented before splitting (original protocol): {leaks['outside']} of "
                     f"{leaks['copies']} augmented copies sit in another split than their source image (train holds "
                     f"{leaks['train_copies_of_eval']} copies of val/test images, val/test hold "
                     f"{leaks['eval_copies_of_train']} copies of training images)" if leaks else
                     _protocol(described, near is not None, settings.folds)),
        "contamination": leaks,
        "grouping": described,
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
        "skipped_not_images": len(skipped),
        "skipped_examples": list(skipped[:20]),
        "duplicates": dup_counts["duplicates"],
        "conflicts": dup_counts["conflicts"],
        "near_duplicate_clusters": near,
        "elapsed_s": round(elapsed, 2),
        "images_per_s": round(n_sources / elapsed, 1) if elapsed > 0 else None,
        "settings": {**asdict(settings), "ratios": list(settings.ratios), "augment_ops": list(settings.augment_ops)},
    }


def _copies_outside(manifest: list[list[str]]) -> dict[str, int]:
    """augment.before_split's leak, counted from the manifest (each copy knows its source): copies in another split
    than their source image, in train of a val/test image and the other way round (the audit finds these, and
    sibling copies that share tissue)."""
    split_of = {row[4]: row[1] for row in manifest if row[6] == "none"}
    copies = [(row[1], split_of.get(row[4])) for row in manifest if row[6] != "none"]
    return {"copies": len(copies), "outside": sum(split != home for split, home in copies),
            "train_copies_of_eval": sum(split == "train" and home != "train" for split, home in copies),
            "eval_copies_of_train": sum(split != "train" and home == "train" for split, home in copies)}


def _protocol(grouping: dict[str, Any] | None, copies_merged: bool, folds: int) -> str:
    """What the split keeps apart, and nothing more: "leakage-free" is never claimed for what was not checked."""
    where = "fold" if folds else "split"
    merged = "near-duplicate copies (as the index finds them) merged; " if copies_merged else ""
    if grouping is None:
        return f"grouped split, each group in one {where}; {merged}augmentation of the training split only"
    return f"{grouping['text']}; each group in one {where}; {merged}augmentation of the training split only"


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
    skipped = describe_skipped(summary.get("skipped_examples", []), summary.get("skipped_not_images", 0))
    if skipped:
        lines.append(skipped)
    near = summary.get("near_duplicate_clusters")
    if near:
        pairs = (f"; {near['copy_pairs']} copy and {near['overlap_pairs']} overlapping-view pairs"
                 if "overlap_pairs" in near else "")
        lines.append(f"near-duplicate clusters {near['count']} ({near['images_in_clusters']} images, largest "
                     f"{near['largest']}; {near['mixed_label_count']} with both labels{pairs}): each kept in one "
                     f"group")
        if near.get("blank_count"):
            lines.append(f"{near['blank_count']} blank image(s) (background, pen marks) are never matched, so never "
                         f"merged: see near_duplicate_clusters.blank in summary.json")
    grouping = summary.get("grouping")
    if grouping:
        lines.append(f"groups: {grouping['text']}")
        lines += [f"  {line}" for line in grouping.get("evidence", [])]
    lines.append(f"protocol: {summary['protocol']}")
    return "\n".join(lines)
