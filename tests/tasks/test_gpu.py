"""The CUDA path, end to end: skipped without a GPU (CI has none; `benchmarks/gpu_check.sh` runs it on one).

What only a GPU exercises: the finite-loss guard's deferred CUDA branch (pinned async copy + event), pinned uint8
batches normalised on the device, bf16-mixed autocast, cuDNN autotune, and eval/predict on the device agreeing with
the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import tiny_train_config
from tests.models.test_finite_loss import nan_logits_from_epoch_one

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "data.num_workers=2"]


def test_cuda_guard_defers_and_names_the_step() -> None:
    from bcc_lightning.models.finite_loss import FiniteLossGuard

    guard = FiniteLossGuard()  # defer=None: the CUDA branch decides by itself
    guard.check(torch.tensor(0.5, device="cuda"), ("train", 0, 0))
    guard.check(torch.tensor(float("nan"), device="cuda"), ("train", 0, 1))  # not looked at yet
    with pytest.raises(UserError, match="train loss became nan at epoch 0, step 1"):
        guard.flush()


def test_nonfinite_loss_stops_on_the_gpu(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nan_logits_from_epoch_one(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"loss became nan at epoch 1"):
        training.run(tiny_train_config(demo_root, [*GPU, "trainer.max_epochs=3", "callbacks=none"]))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0


def test_train_and_evaluate_on_the_gpu_match_the_cpu(demo_root: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """train.py on the GPU (bf16, pinned workers, report with Grad-CAM), then the same checkpoint's test-set
    probabilities on GPU and CPU in fp32 agree."""
    from bcc_lightning.data.datamodule import BCCDataModule
    from bcc_lightning.models.checkpoint import load_checkpoint
    from bcc_lightning.models.inference import predict_batches

    monkeypatch.chdir(tmp_path)
    training.run(tiny_train_config(demo_root, [*GPU, "trainer.max_epochs=2", "logger=csv"], lean=False))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0
    assert list((tmp_path / "test" / "gradcam").glob("*.png"))  # Grad-CAM drawn with the model on the GPU
    model = load_checkpoint(metrics["checkpoint"])
    dm = BCCDataModule(demo_root, model.preprocess, batch_size=8, num_workers=0)
    batches = [images for images, _ in dm.loader("test")]
    on_gpu = predict_batches(model, batches, torch.device("cuda"), "32-true")
    on_cpu = predict_batches(model, batches, torch.device("cpu"), "32-true")
    assert torch.allclose(on_gpu, on_cpu, atol=1e-3), (on_gpu - on_cpu).abs().max()
