"""Resume after a crash, atomic checkpoints, reproducibility, DDP on CPU, sweep summaries, sweeper configs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bcc_lightning import training
from bcc_lightning.aggregate import write_summary
from bcc_lightning.errors import UserError
from bcc_lightning.reliability import AtomicCheckpointIO
from tests.conftest import REPO, compose_config, tiny_train_config

DETERMINISTIC = ["trainer.deterministic=true", "data.num_workers=0", "trainer.precision=32-true",
                 "trainer.accelerator=cpu", "model.img_size=48", "data.batch_size=4", "optimizer.lr=1e-3",
                 "callbacks=none", "report.cam_per_group=0", "report.grid_size=0", "logger=csv"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _history(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "history.csv").open()))


def test_killed_run_resumes_to_the_same_result(demo_root: Path, tmp_path: Path) -> None:
    args = [sys.executable, str(REPO / "train.py"), f"data.root={demo_root}", "trainer.max_epochs=4",
            "+trainer.enable_progress_bar=false", *DETERMINISTIC, "data.batch_size=2", "model.img_size=64"]
    straight = subprocess.run([*args, f"hydra.run.dir={tmp_path / 'straight'}"], env=_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([*args, f"hydra.run.dir={run}"], env=_env(), cwd=tmp_path,
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

    resumed = subprocess.run([*args, f"hydra.run.dir={run}", "resume=true"], env=_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _history(tmp_path / "straight"), _history(run)
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


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def crash(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"half a checkpoint")  # type: ignore[arg-type]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_corrupt_checkpoint_for_resume_is_a_clear_error(demo_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="Cannot load checkpoint"):
        training.run(tiny_train_config(demo_root, [f"ckpt_path={bad}"]))
    with pytest.raises(UserError, match="resume=true but"):
        training.run(tiny_train_config(demo_root, ["resume=true"]))


@pytest.mark.parametrize("deferred", [False, True])  # True: the GPU's way (checked one step late), run on the CPU
def test_nonfinite_loss_stops_with_advice(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          deferred: bool) -> None:
    from bcc_lightning.models.module import BCCClassifier, FiniteLossGuard

    monkeypatch.setattr(FiniteLossGuard, "defer", deferred)

    original = BCCClassifier.forward

    def explode(self, x):  # type: ignore[no-untyped-def]
        return original(self, x) * float("nan") if self.current_epoch == 1 else original(self, x)

    monkeypatch.setattr(BCCClassifier, "forward", explode)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"loss became nan at epoch 1.*Lower optimizer.lr.*32-true"):
        training.run(tiny_train_config(demo_root, ["trainer.max_epochs=3", "callbacks=none"]))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # last good kept


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=0", "max_epochs must be at least 1"),
    ("data.augment.hflip=2", "probability"),
    ("model.unfreeze_at_epoch=2", "needs model.freeze_backbone=true"),
    ("model.img_size=40 model=inceptionv3", "too small"),
])
def test_config_mistakes_caught_before_work(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            override: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        training.run(tiny_train_config(demo_root, override.split()))
    assert not (tmp_path / "checkpoints").exists()


def test_ddp_two_cpu_processes_match_one(demo_root: Path, tmp_path: Path, trained_run: Path) -> None:
    ckpt = json.loads((trained_run / "metrics.json").read_text())["checkpoint"]
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"ddp{devices}.json"
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "ddp_validate.py"), ckpt, str(demo_root),
                               str(devices), str(out)], env=_env(), cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = json.loads(out.read_text())
    assert results[2]["world_size"] == 2
    for key in ("val/loss", "val/acc", "val/auroc", "val/f1"):
        assert results[2][key] == pytest.approx(results[1][key], abs=1e-5), key


def test_sweep_summary_written_and_sorted(demo_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", f"data.root={demo_root}", "optimizer.lr=1e-2,1e-3",
         "trainer.max_epochs=1", "data.num_workers=0", "model.img_size=48", "report.cam_per_group=0",
         "report.grid_size=0", "logger=none", f"hydra.sweep.dir={sweep}"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert {float(r["optimizer.lr"]) for r in rows} == {1e-2, 1e-3}
    values = [float(r["best_monitor_value"]) for r in rows]
    assert values == sorted(values)
    assert "| job | optimizer.lr | val/loss" in (sweep / "sweep_summary.md").read_text()

    (sweep / "7" / ".hydra").mkdir(parents=True)  # a job that died before writing anything
    summary = write_summary(sweep)
    assert summary["missing"] == ["7"] and "Missing: jobs 7" in (sweep / "sweep_summary.md").read_text()


def test_optuna_and_slurm_configs_compose() -> None:
    cfg = compose_config("train", ["hparams_search=optuna", "hydra/launcher=slurm"], hydra=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert "optimizer.lr" in cfg.hydra.sweeper.params
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


def test_optuna_runs_three_tiny_trials(demo_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "optuna"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "hparams_search=optuna", "hydra.sweeper.n_trials=3",
         "hydra.sweeper.sampler.n_startup_trials=2", "~hydra.sweeper.params.model",
         f"data.root={demo_root}", "trainer.max_epochs=1",
         "data.num_workers=0", "model.img_size=48", "report.cam_per_group=0", "report.grid_size=0", "logger=none",
         f"hydra.sweep.dir={sweep}"],
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and isinstance(best["best_value"], float)
    assert len([p for p in sweep.iterdir() if (p / "metrics.json").is_file()]) == 3


def test_deferred_finite_check_names_the_bad_step() -> None:
    from bcc_lightning.models.module import FiniteLossGuard

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
