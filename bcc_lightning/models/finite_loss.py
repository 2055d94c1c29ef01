"""Stop training on a non-finite loss, without making a GPU wait for the host at every step."""

from __future__ import annotations

from typing import Any

import torch

from bcc_lightning.utils.errors import UserError


class FiniteLossGuard:
    """Stops training on a non-finite loss with advice. On the CPU at once; on a GPU one step late, because a
    Python `if` on a device value would make the host wait for every step and starve the kernel queue. The loss
    is copied to (pinned) host memory asynchronously and looked at when the next step is queued, or when an epoch
    ends (before any checkpoint of that epoch is written)."""

    defer: bool | None = None  # None: defer on CUDA only (tests set True to run the deferred path on the CPU)

    def __init__(self) -> None:
        self.pending: tuple[torch.Tensor, Any, tuple[str, int, int]] | None = None

    def check(self, loss: torch.Tensor, where: tuple[str, int, int]) -> None:
        cuda = loss.device.type == "cuda"
        if not (cuda if self.defer is None else self.defer):
            self._raise_if_bad(loss.detach(), where)
            return
        event = None
        if cuda:
            value = loss.detach().to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            value = loss.detach().clone()
        previous, self.pending = self.pending, (value, event, where)
        if previous is not None:
            self._settle(previous)

    def flush(self) -> None:
        if self.pending is not None:
            previous, self.pending = self.pending, None
            self._settle(previous)

    def _settle(self, pending: tuple[torch.Tensor, Any, tuple[str, int, int]]) -> None:
        value, event, where = pending
        if event is not None:
            event.synchronize()
        self._raise_if_bad(value, where)

    @staticmethod
    def _raise_if_bad(loss: torch.Tensor, where: tuple[str, int, int]) -> None:
        if not torch.isfinite(loss):
            stage, epoch, step = where
            raise UserError(
                f"The {stage} loss became {loss.item()} at epoch {epoch}, step {step}. Lower optimizer.lr or train "
                f"in full precision (trainer.precision=32-true); the last good checkpoint is kept in the run's "
                f"checkpoints/ folder."
            )
