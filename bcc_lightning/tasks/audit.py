"""`bcc-audit root=SPLIT_ROOT [fold=k]` (also `python -m bcc_lightning.tasks.audit`): near-duplicate copies and
patients (manifest groups, or inferred: data/groups.py) across splits. Writes leakage.csv/.md/.json, groups.json
(and leakage_pairs.png) into the run directory, prints the verdicts, and exits 1 when copies or patients cross
splits (0 when clean), so it can gate a pipeline."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.data.audit import audit_splits, audit_workers, verdict, write_audit
from bcc_lightning.data.groups import group_overlap, write_overlap
from bcc_lightning.utils.config import check_config, run_dir
from bcc_lightning.utils.errors import UserError


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


def run(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    root = Path(str(cfg.root)).expanduser()
    if not root.is_dir():
        raise UserError(f"root={root} does not exist or is not a folder. Pass a split folder ROOT/{{train,val,test}}/"
                        f"{{B,M}} or one written by bcc-prepare.")
    outdir = run_dir()
    show = sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress)
    with ExitStack() as stack:
        result = audit_splits(root, fold=None if cfg.fold is None else int(cfg.fold),
                              workers=audit_workers(cfg.num_workers), cache_dir=cfg.get("cache"),
                              progress=_progress(stack, show), min_overlap=float(cfg.get("min_overlap", 0.5)))
    write_audit(outdir, result)
    # Patients (or slides) on both sides leak as much as copies: from the manifest's groups, or inferred.
    overlap = group_overlap(root, None if cfg.fold is None else int(cfg.fold))
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
