"""`eval.py ckpt=...`: rebuild the model from its checkpoint, evaluate one split, write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import is_demo_root
from bcc_lightning.errors import UserError
from bcc_lightning.models.module import load_checkpoint
from bcc_lightning.reports.report import write_evaluation
from bcc_lightning.runtime import resolve_precision, run_dir


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise UserError("Pass the checkpoint to evaluate: `python eval.py ckpt=outputs/train/<run>/checkpoints/"
                        "last.ckpt` (train.py prints the best checkpoint's path at the end).")
    if cfg.split not in ("train", "val", "test"):
        raise UserError(f"split must be train, val or test (got {cfg.split!r}).")
    outdir = run_dir()
    ckpt = Path(cfg.ckpt).expanduser().resolve()
    model = load_checkpoint(ckpt)
    data_info = model.hparams.get("data_info") or {}
    root = Path(cfg.data.root or data_info.get("root") or "").expanduser()
    if not str(root) or str(root) == ".":
        raise UserError(f"The checkpoint {ckpt} does not say which data it was trained on; pass data.root=ROOT.")
    datamodule = BCCDataModule(root, model.preprocess, batch_size=cfg.data.batch_size,
                               num_workers=cfg.data.num_workers, test_split=cfg.split)
    datamodule.dataset(cfg.split)
    accelerator = str(cfg.trainer.accelerator)
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        precision=resolve_precision(cfg.trainer.precision, accelerator),
                        enable_progress_bar=bool(cfg.progress_bar), default_root_dir=str(outdir))
    trainer.test(model, datamodule=datamodule, verbose=False)
    labels, probs = model.test_predictions()
    synthetic = bool(data_info.get("synthetic_data")) or is_demo_root(root)
    context = {"split": cfg.split, "data_root": str(root.resolve()), "synthetic_data": synthetic,
               "checkpoint": str(ckpt), "model": model.hparams.model["name"], "img_size": model.preprocess.img_size}
    result = write_evaluation(outdir, labels.numpy(), probs.numpy(), float(cfg.threshold), context)
    print((outdir / "classification_report.txt").read_text())
    print(f"Report written to {outdir} (metrics.json, classification_report.txt, confusion_matrix.png)")
    return result
