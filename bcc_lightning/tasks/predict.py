"""`bcc-predict ckpt=PATH input=FILE_OR_DIR [out=preds.csv] [cam=true]` (also `python -m bcc_lightning.tasks.predict`):
classify new images; predictions.csv has the same schema as evaluation's (true_label empty).

threshold=auto (the default) applies the operating point the checkpoint carries (`bcc-eval ... save_to=model.ckpt`
writes it): its threshold, temperature and TTA views; a checkpoint without one stops with a message that says how to
get one. A number or an evaluation's metrics.json can be given instead. The work is prediction.folder's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.models.checkpoint import point_label, resolve_tta
from bcc_lightning.prediction.folder import predict
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.utils.config import check_config, run_dir
from bcc_lightning.utils.errors import UserError
from bcc_lightning.utils.progress import wants_progress


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    if not cfg.ckpt or not cfg.input:
        raise UserError("Usage: bcc-predict ckpt=PATH input=FILE_OR_DIR [out=preds.csv] "
                        "[threshold=auto|0.5|PATH/metrics.json] [tta=auto|true|false] [cam=true]")
    out = Path(cfg.out) if cfg.out else run_dir() / "predictions.csv"
    progress = wants_progress(cfg.progress)
    check_config(cfg)
    ckpt = Path(cfg.ckpt).expanduser()
    threshold, point = resolve_operating_point(cfg.threshold, ckpt)
    tta = resolve_tta(cfg.tta, point)
    print(f"Threshold {threshold:.4f} ({point_label(point)}); {'TTA: 8 views' if tta else 'no TTA'}")
    rows = predict(ckpt, Path(cfg.input).expanduser(), out, threshold,
                   int(cfg.data.batch_size), cfg.data.num_workers, str(cfg.trainer.accelerator),
                   cfg.trainer.precision, tta,
                   bool(cfg.cam), Path(cfg.cam_dir) if cfg.cam_dir else None, cfg.cam_layer, progress,
                   point=point, fast=cfg.inference.fast)
    failed = sum(1 for r in rows if r["error"])
    malignant = sum(1 for r in rows if r["pred_label"] == "malignant")
    print(f"{len(rows)} images: {malignant} malignant, {len(rows) - malignant - failed} benign, {failed} unreadable "
          f"(see the error column) at threshold {threshold:.4f} ({point_label(point)}). Written to {out}")
    return rows


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import predict as _main

    _main()
