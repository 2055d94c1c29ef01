"""Hardware the config asks for but the machine lacks: one paragraph before Lightning's traceback."""

from pathlib import Path

import pytest
import torch

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.device import check_accelerator
from bcc_lightning.utils.errors import UserError
from tests.conftest import tiny_train_config


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_requested_without_one(monkeypatch: pytest.MonkeyPatch, accelerator: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=f"trainer.accelerator={accelerator} but PyTorch sees no CUDA GPU.*"
                                        "trainer.accelerator=cpu"):
        check_accelerator(accelerator)
    check_accelerator("auto")
    check_accelerator("cpu")


def test_mps_requested_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match="trainer.accelerator=mps but Apple's Metal backend is not available"):
        check_accelerator("mps")


def test_more_gpus_than_the_machine_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="trainer.devices=4 but this machine has 1 CUDA GPU"):
        check_accelerator("gpu", 4)
    check_accelerator("gpu", 1)
    check_accelerator("gpu", "auto")


def test_train_with_gpu_on_a_cpu_machine_stops_before_work(demo_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="sees no CUDA GPU"):
        training.run(tiny_train_config(demo_root, ["trainer.accelerator=gpu"]))
    assert not (tmp_path / "checkpoints").exists()
