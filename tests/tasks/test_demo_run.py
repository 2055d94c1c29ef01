"""The README's demo command, end to end (slow: about a minute on 2 CPU cores). Run with `pytest -m slow`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_demo_experiment_reaches_90_percent(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=demo", f"data.root={tmp_path / 'demo_data'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["synthetic_data"] is True
    assert metrics["metrics"]["accuracy"] >= 0.9, metrics["metrics"]


@pytest.mark.slow
def test_compiled_training_writes_plain_checkpoints(demo_root: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from bcc_lightning.models.checkpoint import load_checkpoint
    from bcc_lightning.tasks import train as training
    from tests.conftest import tiny_train_config

    monkeypatch.chdir(tmp_path)
    training.run(tiny_train_config(demo_root, ["compile=true", "logger=none", "report.cam_per_group=0"]))
    ckpt = json.loads((tmp_path / "metrics.json").read_text())["checkpoint"]
    keys = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k.startswith("_orig_mod") for k in keys)
    assert load_checkpoint(ckpt).preprocess.img_size == 64
