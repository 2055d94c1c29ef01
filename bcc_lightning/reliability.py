"""Crash safety for training: atomic, weights-only checkpoints and per-epoch seeding for exact resumption."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bcc_lightning.models.module import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed into place: a crash mid-write leaves the previous
    file intact. They are read back weights-only (no pickled code runs), also when training resumes."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)  # weights-only, on the CPU, with a clear error for a corrupt file


def seed_for_epoch(seed: int, epoch: int) -> None:
    """Reseed every RNG from (seed, epoch): epoch N draws the same shuffle, augmentation and dropout whether the run
    went straight through or was resumed from a checkpoint."""
    value = (int(seed) * 1_000_003 + int(epoch)) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


class EpochSeeder(L.Callback):
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        seed_for_epoch(self.seed + trainer.global_rank, trainer.current_epoch)
