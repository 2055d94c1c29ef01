"""Resume after a crash, reproducibility, bad checkpoints for resume."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import DETERMINISTIC, history_rows, run_in, subprocess_env, tiny_train_config
from tests.tasks.test_signals import BASE, BATCHES, assert_same_weights, stop_at, train_cmd, weights


def test_killed_run_resumes_to_the_same_result(demo_root: Path, tmp_path: Path) -> None:
    """SIGKILL, which no handler sees, in the middle of epoch 1: last.ckpt (written at each epoch boundary) holds
    epoch 0, and resume=true ends with the weights and history of an uninterrupted run. Only the killed run is a
    process of its own (SIGKILL needs one); the straight and resumed runs are in-process, with the same one torch
    thread, so that the arithmetic is the same."""
    overrides = [*BASE, "torch_threads=1"]
    threads = torch.get_num_threads()
    try:
        run_in(tmp_path / "straight", training.run, tiny_train_config(demo_root, overrides))

        run, marker = tmp_path / "killed", tmp_path / "marker"
        # SignalAt writes the marker after batch 1 of epoch 1, then waits (for a SIGTERM that never comes).
        log = tmp_path / "killed.log"  # a file, not a pipe: nobody reads while it runs
        with log.open("w") as sink:
            proc = subprocess.Popen(train_cmd(demo_root, run, ["torch_threads=1", *stop_at(1, 1, marker=marker)]),
                                    env=subprocess_env(), cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"training ended before the marker (rc {proc.wait()}): {log.read_text()[-2000:]}")
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["global_step"] == BATCHES  # the end of epoch 0
        assert not (run / "metrics.json").exists()

        run_in(run, training.run, tiny_train_config(demo_root, [*overrides, "resume=true"]))
    finally:
        torch.set_num_threads(threads)
    assert [r["epoch"] for r in history_rows(run)] == ["0.0", "1.0"]  # logged continuously, each epoch once
    # Deterministic CPU kernels, per-epoch seeding and per-epoch sampler order: bit-identical.
    assert_same_weights(weights(tmp_path / "straight"), weights(run))
    assert history_rows(tmp_path / "straight") == history_rows(run)


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
