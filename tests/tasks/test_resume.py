"""Resume after a crash, reproducibility, bad checkpoints for resume."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import DETERMINISTIC, REPO, history_rows, subprocess_env, tiny_train_config


def test_killed_run_resumes_to_the_same_result(demo_root: Path, tmp_path: Path) -> None:
    args = [sys.executable, str(REPO / "train.py"), f"data.root={demo_root}", "model.pretrained=false",
            "trainer.max_epochs=4",
            "+trainer.enable_progress_bar=false", *DETERMINISTIC, "data.batch_size=2", "model.img_size=64"]
    straight = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'straight'}"], env=subprocess_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([*args, f"hydra.run.dir={run}"], env=subprocess_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill as soon as the first epoch's checkpoint exists
        if last.is_file():
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert epoch_at_kill < 3, "the run got too far before the kill"
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run([*args, f"hydra.run.dir={run}", "resume=true"], env=subprocess_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = history_rows(tmp_path / "straight"), history_rows(run)
    assert [r["epoch"] for r in b] == ["0.0", "1.0", "2.0", "3.0"]  # logged continuously, each epoch once
    # Deterministic CPU kernels, per-epoch seeding and per-epoch sampler order: the same numbers (to 1e-6).
    for ra, rb in zip(a, b):
        assert float(ra["val/loss"]) == pytest.approx(float(rb["val/loss"]), abs=1e-6)
        assert float(ra["train/loss"]) == pytest.approx(float(rb["train/loss"]), abs=1e-6)


def test_same_seed_same_metrics(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        training.run(tiny_train_config(demo_root, ["trainer.max_epochs=2", *DETERMINISTIC]))
        results.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert results[0]["metrics"] == results[1]["metrics"]
    assert results[0]["best_monitor_value"] == results[1]["best_monitor_value"]


def test_corrupt_checkpoint_for_resume_is_a_clear_error(demo_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="Cannot load checkpoint"):
        training.run(tiny_train_config(demo_root, [f"ckpt_path={bad}"]))
    with pytest.raises(UserError, match="resume=true but"):
        training.run(tiny_train_config(demo_root, ["resume=true"]))
