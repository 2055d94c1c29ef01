"""Per-epoch train/val history, kept in the checkpoint and as <run>/history.csv, for training-curve plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from bcc_lightning.reports.metrics import METRICS
from bcc_lightning.utils.atomic_io import write_text

# Every training-time metric of the registry (those with a torchmetric), so a newly registered one gets its curve.
_LOGGED = tuple(spec.logger for spec in METRICS.values() if spec.torchmetric and spec.logger)
COLUMNS = ("epoch", "train/loss", *(f"train/{name}" for name in _LOGGED), "val/loss",
           *(f"val/{name}" for name in _LOGGED), "lr")


class History(Callback):
    """Collects epoch metrics; its state travels inside every checkpoint (a checkpoint explains its own curves)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else None
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row: dict[str, float] = {"epoch": float(trainer.current_epoch)}
        for key in COLUMNS[1:-1]:
            if key in metrics:
                row[key] = float(metrics[key])
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if self.path is not None and trainer.is_global_zero:
            write_text(self.path, to_csv(self.rows))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]  # get: a checkpoint's state, not a config


def to_csv(rows: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_history(ckpt_path: Path, checkpoint: dict[str, Any] | None = None) -> tuple[list[dict[str, float]], str]:
    """History of the run that wrote `ckpt_path`: its run's history.csv if present (all epochs), else the copy
    inside the checkpoint (epochs up to the checkpoint). Returns (rows, where they came from)."""
    run_csv = ckpt_path.resolve().parent.parent / "history.csv"
    if run_csv.is_file():
        with run_csv.open() as handle:
            rows = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(handle)]
        if rows:
            return rows, str(run_csv)
    # get: a weights-only or foreign checkpoint may carry no callback states (then no history)
    for key, state in ((checkpoint or {}).get("callbacks") or {}).items():
        if key.startswith("History") and state.get("rows"):
            return state["rows"], f"the checkpoint ({ckpt_path.name}; epochs up to it)"
    return [], ""
