"""`python -m bcc_lightning.prepare raw=RAW out=OUT`: raw B/M folder -> leakage-free train/val/test split."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.data.prepare import PrepareSettings, format_table, prepare

log = logging.getLogger("bcc_lightning.prepare")


def settings_from(cfg: DictConfig) -> PrepareSettings:
    workers = (os.cpu_count() or 1) if cfg.workers == "auto" else int(cfg.workers)
    return PrepareSettings(
        raw=str(cfg.raw), out=str(cfg.out), ratios=tuple(float(r) for r in cfg.ratios), seed=int(cfg.seed),
        group=str(cfg.group), group_pattern=cfg.group_pattern, augment_ops=tuple(cfg.augment.ops),
        augment_copies=int(cfg.augment.copies), augment_before_split=bool(cfg.augment.before_split),
        augment_max_degrees=float(cfg.augment.max_degrees), resize=None if cfg.resize is None else int(cfg.resize),
        format=str(cfg.format), jpg_quality=int(cfg.jpg_quality), workers=workers, overwrite=bool(cfg.overwrite),
        folds=int(cfg.folds), holdout_test=bool(cfg.holdout_test),
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    settings = settings_from(cfg)
    show_progress = sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress)
    summary = prepare(settings, progress=show_progress, log=log.warning)
    print(format_table(summary))
    print(f"Split written to {settings.out} (manifest.csv, rejected.csv, summary.json). "
          f"Train on it with: python train.py data.root={settings.out}")
    return summary


if __name__ == "__main__":
    from bcc_lightning.cli import prepare as _main

    _main()
