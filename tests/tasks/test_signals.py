"""SIGTERM and SIGUSR1 during training: a clean stop (exit status, one paragraph, no traceback), last.ckpt at the
last epoch boundary, and `resume=true` ending with the same weights as an uninterrupted run (bit-identical)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bcc_lightning.callbacks.preemption import StopSignals
from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import Stopped
from tests.conftest import DETERMINISTIC, REPO, history_rows, run_in, subprocess_env, tiny_train_config

# 3 training batches of 4 images an epoch, and one validation batch: the least that shows an epoch boundary.
BASE = [*DETERMINISTIC, "trainer.max_epochs=2", "trainer.enable_model_summary=false", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1"]
BATCHES = 3


def stop_at(epoch: int, batch: int, signum: int | None = None, marker: Path | None = None) -> list[str]:
    """Overrides adding tests/tasks/signal_helpers.SignalAt: signal (or mark) after `batch` of `epoch`."""
    spec = "+callbacks.stop"
    return [f"{spec}._target_=tests.tasks.signal_helpers.SignalAt", f"{spec}.epoch={epoch}", f"{spec}.batch={batch}",
            *([f"{spec}.signum={int(signum)}"] if signum is not None else []),
            *([f"{spec}.marker={marker}"] if marker is not None else [])]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


@pytest.fixture(scope="module")
def straight(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every stopped-and-resumed run must match."""
    run = tmp_path_factory.mktemp("straight")
    run_in(run, training.run, tiny_train_config(demo_root, BASE))
    return run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signals_outside_fit_stop_at_once(signum: int) -> None:
    before = signal.getsignal(signum)
    with pytest.raises(Stopped) as stopped, StopSignals():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises in this thread before the sleep ends
    assert stopped.value.exit_code == 128 + signum
    assert signal.getsignal(signum) == before  # the previous handler is back


def _stop_and_check(demo_root: Path, run: Path, signum: int, epoch: int) -> None:
    with pytest.raises(Stopped) as stopped:
        run_in(run, training.run, tiny_train_config(demo_root, [*BASE, *stop_at(epoch, 1, signum)]))
    assert stopped.value.exit_code == 128 + signum
    message = stopped.value.message
    assert f"Stopped by {signal.Signals(signum).name} in epoch {epoch} after batch 2 of {BATCHES}" in message
    assert f"resume=true hydra.run.dir={run}" in message
    assert ("the start of training" if epoch == 0 else f"the end of epoch {epoch - 1}") in message
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == epoch * BATCHES  # the epoch boundary, not the batch where the signal came
    assert not (run / "metrics.json").exists()


def _resume_and_compare(demo_root: Path, run: Path, straight: Path) -> None:
    run_in(run, training.run, tiny_train_config(demo_root, [*BASE, "resume=true"]))
    assert_same_weights(weights(straight), weights(run))
    assert history_rows(straight) == history_rows(run)


def test_sigterm_mid_epoch_then_resume_gives_identical_weights(demo_root: Path, tmp_path: Path,
                                                               straight: Path) -> None:
    """SIGTERM in the second epoch: last.ckpt holds the end of the first; resume redoes the second."""
    _stop_and_check(demo_root, tmp_path, signal.SIGTERM, 1)
    _resume_and_compare(demo_root, tmp_path, straight)


def test_sigusr1_in_the_first_epoch_keeps_the_start_as_resume_point(demo_root: Path, tmp_path: Path) -> None:
    _stop_and_check(demo_root, tmp_path, signal.SIGUSR1, 0)


@pytest.mark.slow
def test_sigusr1_in_the_first_epoch_then_resume_gives_identical_weights(demo_root: Path, tmp_path: Path,
                                                                        straight: Path) -> None:
    _stop_and_check(demo_root, tmp_path, signal.SIGUSR1, 0)
    _resume_and_compare(demo_root, tmp_path, straight)


def test_last_checkpoint_follows_every_epoch(straight: Path) -> None:
    # Lightning's ModelCheckpoint updates last.ckpt only in epochs that improve val/loss; Preemption every epoch.
    last = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2 * BATCHES


def train_cmd(demo_root: Path, run: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), f"data.root={demo_root}", "model.pretrained=false",
            "callbacks.progress_bar=none", *BASE, f"hydra.run.dir={run}", *extra]


def _sigterm_when_marked(cmd: list[str], marker: Path, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"training ended before the marker (rc {proc.returncode}): {err[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_sigterm_to_train_py_exits_143_without_traceback(demo_root: Path, tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "marker"
    result = _sigterm_when_marked(train_cmd(demo_root, run, stop_at(1, 1, marker=marker)), marker, tmp_path)
    assert result.returncode == 143, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    paragraph = " ".join(result.stderr.split())
    assert f"Stopped by SIGTERM in epoch 1 after batch 2 of {BATCHES}." in paragraph
    assert f"{run / 'checkpoints' / 'last.ckpt'} holds the end of epoch 0" in paragraph
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == BATCHES


@pytest.mark.slow
def test_sigterm_then_resume_in_subprocesses_matches_an_uninterrupted_run(demo_root: Path, tmp_path: Path) -> None:
    """The whole command-line flow: straight run, SIGTERM mid-epoch, resume=true; bit-identical final weights."""
    straight_run, run, marker = tmp_path / "straight", tmp_path / "run", tmp_path / "marker"
    done = subprocess.run(train_cmd(demo_root, straight_run, []), env=subprocess_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    stopped = _sigterm_when_marked(train_cmd(demo_root, run, stop_at(1, 1, marker=marker)), marker, tmp_path)
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    resumed = subprocess.run(train_cmd(demo_root, run, ["resume=true"]), env=subprocess_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(weights(straight_run), weights(run))
    assert history_rows(straight_run) == history_rows(run)
