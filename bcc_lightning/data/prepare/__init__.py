"""Raw B/M image folder -> grouped OUT/{train,val,test}/{B,M} + manifest.csv + rejected.csv + summary.json.

Two passes keep memory flat and decode each file once: pass 1 (scan) reads bytes only (sha256, duplicates, label
conflicts, groups); the split (split) is decided on groups; pass 2 (write) decodes, resizes, augments and writes in
parallel. RAW is only ever read. OUT is built in a hidden folder beside it and renamed into place at the end.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bcc_lightning.data.layout import MANIFEST, MANIFEST_COLUMNS, REJECTED, SUMMARY
from bcc_lightning.data.prepare.scan import assign_groups, deduplicate, merge_near_duplicates, scan_raw
from bcc_lightning.data.prepare.settings import PrepareSettings
from bcc_lightning.data.prepare.split import split_groups
from bcc_lightning.data.prepare.summary import check_written, format_table, summarise
from bcc_lightning.data.prepare.write import plan_jobs, verify_written, write_outputs
from bcc_lightning.utils.atomic_io import atomic_directory
from bcc_lightning.utils.errors import UserError

__all__ = ["PrepareSettings", "format_table", "prepare"]


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


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def prepare(settings: PrepareSettings, progress: bool = False,
            log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Build the split; returns the summary that is also written to OUT/summary.json."""
    settings.validate()
    started = time.perf_counter()
    raw, out = Path(settings.raw).expanduser(), Path(settings.out).expanduser()
    _check_paths(raw, out, settings.overwrite)
    if settings.augment_before_split and settings.augment_copies:
        log("WARNING: augment.before_split=true reproduces the original protocol: augmented copies of one image "
            "are spread over train, val AND test, so the test split is CONTAMINATED and its accuracy is inflated. "
            "Use this only to reproduce the original numbers, never to report performance. Without it, copies are "
            "made of training images only and stay in train; a folder augmented before splitting elsewhere is "
            "re-split with group=content, and bcc-audit checks the result.")

    rejected: list[tuple[str, str]] = []
    skipped: list[Path] = []
    sources = scan_raw(raw, rejected, skipped)
    sources, dup_counts = deduplicate(sources, rejected)
    sources, grouping = assign_groups(sources, settings, rejected, raw)
    if grouping.by_image and settings.group == "auto":
        log(f"NOTE: {grouping.text()}: {'; '.join(grouping.evidence)}. Pass group=breakhis or group=pattern "
            f"group_pattern=REGEX if the names carry the patient in a form not recognised here.")
    near = merge_near_duplicates(sources, settings) if settings.dedup_near else None
    split_info = split_groups(sources, settings)
    jobs = plan_jobs(sources, settings)

    with atomic_directory(out, replace=True) as staging:  # an existing OUT is replaced only with overwrite=true
        manifest = write_outputs(jobs, staging, settings, rejected, progress)
        summary = summarise(manifest, rejected, dup_counts, split_info, settings, len(sources),
                            time.perf_counter() - started, near, grouping,
                            skipped=[p.relative_to(raw).as_posix() for p in skipped])
        if summary["ratio_max_deviation"] > 0.02:
            log(f"NOTE: grouped splitting could not meet the ratios exactly: achieved {summary['ratios_achieved']} "
                f"for requested {summary['ratios_requested']} (largest deviation "
                f"{summary['ratio_max_deviation']:.3f}); groups are never cut in two.")
        if near and near["mixed_label_count"]:
            log(f"NOTE: {near['mixed_label_count']} near-duplicate cluster(s) carry both labels (label noise, or one "
                f"image filed twice); each is kept in one group: see near_duplicate_clusters in summary.json.")
        check_written(summary)
        verify_written(staging, manifest)
        _write_csv(staging / MANIFEST, MANIFEST_COLUMNS, manifest)
        _write_csv(staging / REJECTED, ["source", "reason"], sorted(rejected))
        (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
