"""`bcc-aggregate sweep_dir=DIR` (also `python -m bcc_lightning.tasks.aggregate`): sweep summary and statistics;
and the Hydra callback (conf/hydra/default.yaml) that writes them when a `train.py -m` sweep ends."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bcc_lightning.reports.aggregate import write_summary
from bcc_lightning.utils.errors import UserError


class SweepSummaryCallback(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            if sweep_dir.is_dir() and any((p / "metrics.json").is_file() for p in sweep_dir.iterdir() if p.is_dir()):
                write_summary(sweep_dir)
                print(f"Sweep summary: {sweep_dir / 'sweep_summary.md'} and {sweep_dir / 'aggregate.md'}")
        except UserError as exc:
            print(f"No sweep summary: {exc}", file=sys.stderr)


def run(cfg: DictConfig) -> dict[str, Any]:
    sweep_dir = Path(cfg.sweep_dir).expanduser()
    result = write_summary(sweep_dir)
    print((sweep_dir / "sweep_summary.md").read_text())
    print((sweep_dir / "aggregate.md").read_text())
    if result["missing"]:
        print(f"{len(result['missing'])} job(s) have no metrics.json (failed or still running).", file=sys.stderr)
        sys.exit(1)  # scripts can tell a complete sweep from an incomplete one
    return result


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import aggregate as _main

    _main()
