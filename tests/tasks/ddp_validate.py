"""Validate a checkpoint with N CPU processes (DDP, gloo): `python ddp_validate.py CKPT ROOT N OUT.json`; the
single-process reference is `validate(ckpt, root, 1)` in the test's own process."""

import json
import sys
from pathlib import Path

import lightning as L

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.models.checkpoint import load_checkpoint


def validate(ckpt: str, root: str, devices: int) -> dict[str, float] | None:
    """The validation metrics and the world size, on the rank-0 process (None on the others)."""
    model = load_checkpoint(ckpt)
    datamodule = BCCDataModule(root, model.preprocess, batch_size=2, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, enable_progress_bar=False, enable_model_summary=False, precision="32-true")
    metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    if not trainer.is_global_zero:
        return None
    return {**{k: float(v) for k, v in metrics.items()}, "world_size": trainer.world_size}


if __name__ == "__main__":
    result = validate(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    if result is not None:
        Path(sys.argv[4]).write_text(json.dumps(result))
