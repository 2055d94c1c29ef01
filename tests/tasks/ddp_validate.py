"""Helper for test_reliability: validate a checkpoint with N CPU processes (DDP, gloo) and write the metrics."""

import json
import sys
from pathlib import Path

import lightning as L

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.models.checkpoint import load_checkpoint

if __name__ == "__main__":
    ckpt, root, devices, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    model = load_checkpoint(ckpt)
    datamodule = BCCDataModule(root, model.preprocess, batch_size=2, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, enable_progress_bar=False, enable_model_summary=False, precision="32-true")
    metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    if trainer.is_global_zero:
        out.write_text(json.dumps({**{k: float(v) for k, v in metrics.items()}, "world_size": trainer.world_size}))
