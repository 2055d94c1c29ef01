"""`bcc-prepare raw=RAW out=OUT` (also `python -m bcc_lightning.tasks.prepare`): raw B/M folder -> train/val/test
split (or folds) of whole groups: patients where names, folders or a manifest say who they are (group=auto), copies
merged; the table says which."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.data.prepare import PrepareSettings, format_table, prepare
from bcc_lightning.utils.config import check_config
from bcc_lightning.utils.progress import wants_progress

log = logging.getLogger("bcc_lightning.prepare")


def run(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    settings = PrepareSettings.from_config(cfg)
    show_progress = wants_progress(cfg.progress)
    summary = prepare(settings, progress=show_progress, log=log.warning)
    print(format_table(summary))
    print(f"Split written to {settings.out} (manifest.csv, rejected.csv, summary.json). "
          f"Train on it with: python train.py data.root={settings.out}")
    return summary


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import prepare as _main

    _main()
