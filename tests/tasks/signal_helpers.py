"""A callback for the signal tests, added by config (+callbacks.stop._target_=...): at a given batch it signals
its own process, or writes a marker file for a test that signals from outside, then waits until Lightning has seen
the signal, so that the stop lands after exactly that batch."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    def __init__(self, epoch: int, batch: int, signum: int | None = None, marker: str | None = None,
                 wait_s: float = 120.0) -> None:
        self.epoch, self.batch, self.signum, self.marker, self.wait_s = epoch, batch, signum, marker, wait_s

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        if self.signum is not None:
            os.kill(os.getpid(), self.signum)
        if self.marker:
            Path(self.marker).write_text(f"{trainer.current_epoch} {batch_idx}\n")
        deadline = time.monotonic() + self.wait_s
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)
