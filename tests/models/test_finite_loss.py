"""A non-finite loss stops training with advice, at once on CPU and one step late (the GPU way)."""

from pathlib import Path

import pytest
import torch

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import tiny_train_config


def nan_logits_from_epoch_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's logits become NaN in epoch 1 (epoch 0 trains normally and leaves a good checkpoint)."""
    from bcc_lightning.models.module import BCCClassifier

    original = BCCClassifier.forward

    def explode(self, x):  # type: ignore[no-untyped-def]
        return original(self, x) * float("nan") if self.current_epoch == 1 else original(self, x)

    monkeypatch.setattr(BCCClassifier, "forward", explode)


@pytest.mark.parametrize("deferred", [False, True])  # True: the GPU's way (checked one step late), run on the CPU
def test_nonfinite_loss_stops_with_advice(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          deferred: bool) -> None:
    from bcc_lightning.models.finite_loss import FiniteLossGuard

    monkeypatch.setattr(FiniteLossGuard, "defer", deferred)
    nan_logits_from_epoch_one(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"loss became nan at epoch 1.*Lower optimizer.lr.*32-true"):
        training.run(tiny_train_config(demo_root, ["trainer.max_epochs=3", "callbacks=none"]))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # last good kept


def test_deferred_finite_check_names_the_bad_step() -> None:
    from bcc_lightning.models.finite_loss import FiniteLossGuard

    guard = FiniteLossGuard()
    guard.defer = True
    guard.check(torch.tensor(0.7), ("train", 0, 0))
    guard.check(torch.tensor(float("inf")), ("train", 0, 1))  # not looked at yet: the device would still be busy
    with pytest.raises(UserError, match="train loss became inf at epoch 0, step 1"):
        guard.check(torch.tensor(0.6), ("train", 0, 2))
    guard.check(torch.tensor(float("nan")), ("val", 1, 5))
    with pytest.raises(UserError, match="val loss became nan at epoch 1, step 5"):
        guard.flush()
    guard.flush()  # nothing pending: no error
