"""`bcc-audit data.root=SPLIT_ROOT [data.fold=k]` (also `python -m bcc_lightning.tasks.audit`): near-duplicate
copies and patients (manifest groups, or inferred: data/groups.py) across splits. Writes leakage.csv/.md/.json,
groups.json (and leakage_pairs.png) into the run directory, prints the verdicts, and exits 1 when copies or patients
cross splits (0 when clean), so it can gate a pipeline. The data keys are train's (data.root, data.fold,
data.num_workers, data.cache); the old top-level spellings (`root=`) still work."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from bcc_lightning.data.audit import audit_splits, audit_workers, verdict, write_audit
from bcc_lightning.data.groups import group_overlap, write_overlap
from bcc_lightning.utils.config import check_config, log, run_dir
from bcc_lightning.utils.errors import UserError
from bcc_lightning.utils.progress import wants_progress


def _progress(stack: ExitStack, enabled: bool) -> Any:
    """A rich bar per split when a person watches; None otherwise (describe_files reports through a callback)."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars = stack.enter_context(Progress(TextColumn("describing {task.description}"), BarColumn(),
                                        MofNCompleteColumn(), TimeRemainingColumn(), transient=True))
    tasks: dict[str, Any] = {}

    def tick(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total)
        bars.update(tasks[name], completed=done)

    return tick


# The top-level keys bcc-audit took before it spoke train's data.* vocabulary (#28). audit.yaml keeps each as an
# interpolation of its new key, so that scripts with `bcc-audit root=X` still run.
OLD_SPELLINGS = {"root": "data.root", "fold": "data.fold", "num_workers": "data.num_workers", "cache": "data.cache",
                 "min_overlap": "audit.min_overlap"}


def adopt_old_spellings(cfg: DictConfig) -> list[str]:
    """Move each old key given a value of its own (not its interpolation) to its new key, drop the old keys so that
    one place holds each setting, and log one line naming the new spellings. Returns the old keys that were given."""
    given = [old for old in OLD_SPELLINGS if old in cfg and not OmegaConf.is_interpolation(cfg, old)]
    with open_dict(cfg):
        for old in given:
            OmegaConf.update(cfg, OLD_SPELLINGS[old], cfg[old], merge=False)
        for old in [key for key in OLD_SPELLINGS if key in cfg]:
            del cfg[old]  # not pop(): that resolves the interpolation, and data.root may still be ??? here
    if given:
        log.warning("bcc-audit: %s %s of %s (still accepted; write the new one in scripts).",
                    ", ".join(f"{old}=" for old in given),
                    "is the old spelling" if len(given) == 1 else "are the old spellings",
                    ", ".join(f"{OLD_SPELLINGS[old]}=" for old in given))
    return given


def run(cfg: DictConfig) -> dict[str, Any]:
    adopt_old_spellings(cfg)
    check_config(cfg)
    if OmegaConf.is_missing(cfg.data, "root"):
        raise UserError("bcc-audit needs the split folder to audit: data.root=ROOT, a folder ROOT/{train,val,test}/"
                        "{B,M} or one written by bcc-prepare.")
    root = Path(str(cfg.data.root)).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={root} does not exist or is not a folder. Pass a split folder ROOT/{{train,val,"
                        f"test}}/{{B,M}} or one written by bcc-prepare.")
    fold = None if cfg.data.fold is None else int(cfg.data.fold)
    # null and train's `auto` both mean the default descriptor cache; false: none; anything else is a folder.
    cache = None if cfg.data.cache in (None, "auto") else cfg.data.cache
    outdir = run_dir()
    show = wants_progress(cfg.progress)
    with ExitStack() as stack:
        result = audit_splits(root, fold=fold, workers=audit_workers(cfg.data.num_workers), cache_dir=cache,
                              progress=_progress(stack, show), min_overlap=float(cfg.audit.min_overlap))
    write_audit(outdir, result)
    # Patients (or slides) on both sides leak as much as copies: from the manifest's groups, or inferred.
    overlap = group_overlap(root, fold)
    write_overlap(outdir, overlap)
    print(verdict(result))
    print(overlap["verdict"])
    print(f"Audit written to {outdir}/leakage.md (leakage.csv, leakage.json, groups.json).")
    summary = {**result.summary(), "groups": overlap}
    if not summary["clean"] or not overlap["clean"]:
        sys.exit(1)
    return summary


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import audit as _main

    _main()
