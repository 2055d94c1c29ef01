"""Sweep summaries and the sweeper/launcher configs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

from bcc_lightning.reports.aggregate import write_summary
from tests.conftest import REPO, compose_config, subprocess_env


def test_multirun_over_backbones_writes_a_sorted_summary(demo_root: Path, tmp_path: Path) -> None:
    """A config-group sweep (each model its own config) and the summary it ends with; 2 batches an epoch suffice."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", f"data.root={demo_root}", "model.pretrained=false",
         "model=mobilenetv2,densenet121", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "data.num_workers=0", "model.img_size=32", "report.cam_per_group=0", "report.grid_size=0", "logger=none",
         "data.audit=off", f"hydra.sweep.dir={sweep}"],
        env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert {json.loads(j.read_text())["model"] for j in jobs} == {"mobilenetv2", "densenet121"}
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert {r["model"] for r in rows} == {"mobilenetv2", "densenet121"}
    values = [float(r["best_monitor_value"]) for r in rows]
    assert values == sorted(values)
    assert "| job | model | val/loss" in (sweep / "sweep_summary.md").read_text()

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
        [sys.executable, str(REPO / "train.py"), "hparams_search=optuna", "model.pretrained=false",
         "hydra.sweeper.n_trials=3",
         "hydra.sweeper.sampler.n_startup_trials=2", "~hydra.sweeper.params.model",
         f"data.root={demo_root}", "trainer.max_epochs=1",
         "data.num_workers=0", "model.img_size=32", "trainer.limit_train_batches=2", "report.cam_per_group=0",
         "report.grid_size=0", "logger=none", "data.audit=off", f"hydra.sweep.dir={sweep}"],
        env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and isinstance(best["best_value"], float)
    assert len([p for p in sweep.iterdir() if (p / "metrics.json").is_file()]) == 3


def test_submitit_local_launcher_runs_a_two_job_sweep(demo_root: Path, tmp_path: Path) -> None:
    """The launcher that SLURM uses, with submitit's local executor: jobs run as separate submitit processes."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=10", f"data.root={demo_root}", "model.pretrained=false", "model.img_size=48",
         "trainer.fast_dev_run=true", "data.num_workers=0", "optimizer.lr=1e-3,1e-2", "logger=none",
         "report.cam_per_group=0", "report.grid_size=0", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Submitit 'local' sweep" in proc.stdout + proc.stderr
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # submitit's own job folders: it really launched them
    assert "2 of 2 jobs finished" in (tmp_path / "sweep" / "sweep_summary.md").read_text()
