"""Config values are checked before any work, with one-paragraph errors."""

from pathlib import Path

import pytest

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import tiny_train_config


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=0", "max_epochs must be a whole number >= 1"),
    ("data.augment.hflip=2", r"hflip must be a number in \[0, 1\]"),
    ("model.unfreeze_at_epoch=2", "needs model.freeze_backbone=true"),
    ("model.img_size=40 model=inceptionv3", "too small"),
    ("trainer.max_epochs=abc", "max_epochs must be a whole number"),
    ("data.num_workers=-3", "num_workers must be a whole number >= 0"),
    ("optimizer.lr=-1", "optimizer.lr must be a number"),
])
def test_config_mistakes_caught_before_work(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            override: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        training.run(tiny_train_config(demo_root, override.split()))
    assert not (tmp_path / "checkpoints").exists()
