"""Stopping a training run on SIGTERM or SIGUSR1 so that `resume=true` continues exactly as if it had not stopped.

The resume point is checkpoints/last.ckpt: the end of the last finished epoch, or the start of training before the
first epoch finishes. `Preemption` writes it: Lightning's ModelCheckpoint (save_last=true) updates last.ckpt only in
epochs that also save a top-k checkpoint, i.e. when the monitored value improved. A signal stops the run after the
current batch without writing a mid-epoch checkpoint, and `resume=true` redoes the unfinished epoch from its start.
That is exact because every draw of an epoch (shuffle, augmentation, dropout) comes from (seed, epoch) alone
(EpochSeeder, EpochSampler). A mid-epoch checkpoint would also need the loader's position, every RNG state and the
epoch's metric accumulators; Lightning resumes those only approximately for loaders without state.

Lightning's own handlers: during `fit` its SIGTERM handler sets the trainer's stop flag and then calls the handler it
found (ours), and the loops stop at the next batch boundary (on every rank under DDP). SIGUSR1 sets the same flag.
Because our SIGUSR1 handler is installed first, Lightning does not add its SLURM auto-requeue handler, which would
write a mid-epoch `hpc_ckpt_N.ckpt` that cannot resume exactly; the job script requeues instead (README).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from bcc_lightning.utils.errors import Stopped

log = logging.getLogger("bcc_lightning")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """SIGTERM and SIGUSR1 handlers for the length of a `with` block (a whole training task).

    Outside `fit` a signal raises `Stopped` at once: every file is written atomically, so nothing is left half
    written. Inside `fit` (while `trainer` is set, by `Preemption`) it asks Lightning to stop after the current batch.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.trainer: L.Trainer | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self.trainer is None:
            raise Stopped(signum, f"Stopped by {signal.Signals(signum).name} outside the training loop (preparing "
                                  f"or evaluating). Files already written are complete; checkpoints/last.ckpt, if "
                                  f"there is one, resumes with resume=true.")
        connector = getattr(self.trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "received_sigterm"):
            connector.received_sigterm = True  # the flag Lightning's loops check after each batch
        else:  # a Lightning without the flag: stop at once (the resume point on disk is unaffected)
            raise Stopped(signum)
        if first:
            log.warning("Received %s: stopping after the current batch.", signal.Signals(signum).name)


class Preemption(Checkpoint):
    """Keeps checkpoints/last.ckpt at the last epoch boundary (or the start of a fresh run) and describes, when a
    signal stops `fit`, where to resume from.

    A `Checkpoint` subclass so that Lightning runs its hooks after ModelCheckpoint's and EarlyStopping's: the state
    it saves is the one ModelCheckpoint would have saved as last.ckpt at that point."""

    def __init__(self, signals: StopSignals | None = None) -> None:
        self.signals = signals
        self.saved: tuple[int, int] | None = None  # (epoch, global_step) of the last checkpoint written

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.signals is not None and stage == "fit":
            self.signals.trainer = trainer

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.signals is not None and stage == "fit":
            self.signals.trainer = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path or trainer.global_step or trainer.current_epoch:
            return  # a resumed run: the checkpoint it resumed from is its resume point
        self._save_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Only the validation at the end of the epoch's training batches is a boundary (not val_check_interval < 1).
        if not trainer.sanity_checking and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer)  # epochs without validation (ModelCheckpoint saves here then too)

    def _save_last(self, trainer: L.Trainer) -> None:
        checkpoint = _last_checkpointer(trainer)
        if checkpoint is None or trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING:
            return  # no last.ckpt kept, or no checkpoints at all
        if self.saved is not None and self.saved[1] == trainer.global_step and trainer.global_step:
            return  # ModelCheckpoint (or this callback) already saved this step
        path = Path(checkpoint.last_model_path or last_path(checkpoint))
        # Set first: the path is part of the saved state, and ModelCheckpoint then keeps overwriting this file
        # instead of writing last-v1.ckpt beside it.
        checkpoint.last_model_path = str(path)
        trainer.save_checkpoint(path)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.saved = (int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)))

    def summary(self, trainer: L.Trainer, signum: int, run_dir: Path) -> str:
        """One paragraph: what stopped, where, and how to resume."""
        name = signal.Signals(signum).name
        epoch = trainer.current_epoch
        batches = trainer.num_training_batches
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        where = f"in epoch {epoch} after batch {done} of {batches}" if isinstance(batches, int) else f"in epoch {epoch}"
        checkpoint = _last_checkpointer(trainer)
        path = Path(checkpoint.last_model_path or last_path(checkpoint)) if checkpoint is not None else None
        if path is None or not path.is_file():
            return (f"Stopped by {name} {where}, before any checkpoint was written: nothing to resume. Start the run "
                    f"again without resume=true.")
        if self.saved is None:
            holds = "the checkpoint this run resumed from"
        elif self.saved[1] == 0:
            holds = "the start of training"
        else:
            holds = f"the end of epoch {self.saved[0]}"
        resume = f"continue with the same command plus resume=true hydra.run.dir={run_dir}"
        if self.saved is not None and self.saved[1] == trainer.global_step and self.saved[1] > 0:
            return f"Stopped by {name} after epoch {self.saved[0]} finished. {path} holds its end; {resume}."
        return (f"Stopped by {name} {where}. {path} holds {holds}; {resume}. Epoch {epoch} is redone from its start "
                f"with the same seed, so the result equals an uninterrupted run's.")


def _last_checkpointer(trainer: L.Trainer) -> ModelCheckpoint | None:
    for checkpoint in trainer.checkpoint_callbacks:
        if isinstance(checkpoint, ModelCheckpoint) and checkpoint.save_last and checkpoint.dirpath:
            return checkpoint
    return None


def last_path(checkpoint: ModelCheckpoint) -> Path:
    """Where `checkpoint` keeps last.ckpt (its dirpath and CHECKPOINT_NAME_LAST)."""
    return Path(checkpoint.dirpath or ".") / f"{checkpoint.CHECKPOINT_NAME_LAST}{checkpoint.FILE_EXTENSION}"
