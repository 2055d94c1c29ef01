"""End-to-end training and evaluation on tiny generated data (CPU, seconds)."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.tasks import evaluate as evaluation
from bcc_lightning.tasks import train as training
from bcc_lightning.tasks.entry import TASKS, guarded
from bcc_lightning.training.assemble import build_datamodule
from tests.conftest import REPO, compose_config, tiny_train_config


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # outside Hydra the run directory is the current one
    return tmp_path


def test_fast_dev_run(demo_root: Path, in_tmp: Path) -> None:
    cfg = tiny_train_config(demo_root, ["trainer.fast_dev_run=true", "logger=none"])
    training.run(cfg)
    metrics = json.loads((in_tmp / "metrics.json").read_text())
    assert metrics["synthetic_data"] is True and "SYNTHETIC" in metrics["note"]
    assert metrics["metrics"]["n"] == 6  # the whole test split (6 images), evaluated after the 1-batch fit


def test_train_then_eval_reproduces_test_metrics(demo_root: Path, in_tmp: Path) -> None:
    cfg = tiny_train_config(demo_root, ["trainer.max_epochs=2", "logger=all", "model.dropout=0.2"])
    best = training.run(cfg)
    train_metrics = json.loads((in_tmp / "metrics.json").read_text())
    assert best == pytest.approx(train_metrics["best_monitor_value"])
    ckpt = Path(train_metrics["checkpoint"])
    assert ckpt.is_file() and (ckpt.parent / "last.ckpt").is_file()
    for name in ("classification_report.txt", "confusion_matrix.png", "metrics.json"):
        assert (in_tmp / "test" / name).stat().st_size > 0

    # TensorBoard holds per-epoch train/loss, val/loss and val/acc.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(in_tmp / "tensorboard")).Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/loss", "val/loss", "val/acc", "val/auroc", "train/acc"):
        assert tag in tags
    assert len(events.Scalars("val/acc")) == 2 and len(events.Scalars("train/loss")) == 2

    eval_dir = in_tmp / "eval"
    eval_dir.mkdir()
    os.chdir(eval_dir)
    eval_cfg = compose_config("eval", [f"ckpt={ckpt}", "data.num_workers=0", "trainer.accelerator=cpu",
                                       "trainer.precision=32-true"])
    result = evaluation.run(eval_cfg)
    for key in ("accuracy", "auroc", "tp", "fp", "tn", "fn", "log_loss"):
        assert result["metrics"][key] == pytest.approx(train_metrics["metrics"][key], abs=1e-6), key
    assert result["data_root"] == str(demo_root.resolve())  # taken from the checkpoint, not the config
    assert "benign" in (eval_dir / "classification_report.txt").read_text()


def test_checkpoint_is_self_describing(demo_root: Path, in_tmp: Path) -> None:
    cfg = tiny_train_config(demo_root, ["logger=none", "model.hidden=8", "model.img_size=48"])
    training.run(cfg)
    ckpt = json.loads((in_tmp / "metrics.json").read_text())["checkpoint"]
    model = load_checkpoint(ckpt)
    assert model.preprocess.img_size == 48 and model.hparams.model["hidden"] == 8
    assert model.hparams.data_info["synthetic_data"] is True
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain containers only: safe to load
    assert raw["hyper_parameters"]["optimizer"]["lr"] == 1e-3


def test_sanity_check_does_not_leak_into_epoch_zero(demo_root: Path, in_tmp: Path) -> None:
    """With one epoch, the logged val metrics must equal a fresh validation of the final weights."""
    import lightning as L

    cfg = tiny_train_config(demo_root, ["logger=csv", "data.batch_size=2", "trainer.num_sanity_val_steps=2",
                                        "callbacks=none"])
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.monitor = None  # keep the final weights as "last"
    training.run(cfg)
    import csv

    rows = list(csv.DictReader((in_tmp / "csv" / "metrics.csv").open()))
    logged = [float(r["val/auroc"]) for r in rows if r.get("val/auroc")]
    assert len(logged) == 1
    model = load_checkpoint(in_tmp / "checkpoints" / "last.ckpt")
    datamodule = build_datamodule(cfg.data, demo_root, model.preprocess)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    fresh = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    assert logged[0] == pytest.approx(fresh["val/auroc"], abs=1e-6)


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "message"), [
    (["train.py", "data.root=does_not_exist"], "does not exist"),
    (["eval.py"], "Pass the checkpoint"),
    (["-m", "bcc_lightning.tasks.predict", "ckpt=missing.ckpt", "input=."], "does not exist"),
    (["-m", "bcc_lightning.tasks.export", "ckpt=x", "format=tflite"], "format must be one of"),
    (["-m", "bcc_lightning.tasks.prepare", "raw=missing", "out=somewhere"], "does not exist"),
])
def test_user_errors_are_one_paragraph(tmp_path: Path, args: list[str], message: str) -> None:
    """One real command line per command (each pays a torch import); more bad inputs go in-process below."""
    if args[0] != "-m":
        args = [str(REPO / args[0]), *args[1:]]
    result = _run(args + [f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("config", "overrides", "message"), [
    ("train", ["data.root={demo}", "model.name=resnet_typo"], "Unknown backbone"),
    ("train", ["data.root={demo}", "data.batch_size=0"], "batch_size must be a whole number >= 1"),
    ("eval", ["ckpt=missing.ckpt"], "does not exist"),
    ("export", ["ckpt=missing.ckpt"], "does not exist"),
])
def test_user_errors_in_process(demo_root: Path, in_tmp: Path, capsys: pytest.CaptureFixture, config: str,
                                overrides: list[str], message: str) -> None:
    """The entry point's guard around the task, as the command line runs it: exit status 2, one paragraph."""
    cfg = compose_config(config, [o.format(demo=demo_root) for o in overrides])
    task = importlib.import_module(f"bcc_lightning.tasks.{TASKS[config]}").run
    with pytest.raises(SystemExit) as exited:
        guarded(task)(cfg)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("\nerror: ") and message in err.replace("\n", " ") and "Traceback" not in err


def test_resume_from_last_checkpoint(demo_root: Path, in_tmp: Path) -> None:
    first = tiny_train_config(demo_root, ["logger=csv", "callbacks=none"])
    training.run(first)
    last = in_tmp / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    resumed_dir = in_tmp / "resumed"
    resumed_dir.mkdir()
    os.chdir(resumed_dir)
    training.run(tiny_train_config(demo_root, ["logger=csv", "callbacks=none", "trainer.max_epochs=2",
                                              f"ckpt_path={last}"]))
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2
    import csv

    epochs = {r["epoch"] for r in csv.DictReader((resumed_dir / "csv" / "metrics.csv").open()) if r.get("val/loss")}
    assert epochs == {"1"}  # only the second epoch was trained again


@pytest.mark.parametrize(("deterministic", "autotune"), [(False, True), (True, False)])
def test_cudnn_autotuning_unless_deterministic(tmp_path: Path, deterministic: bool, autotune: bool) -> None:
    cfg = compose_config("train", [f"trainer.deterministic={str(deterministic).lower()}", "logger=none"])
    try:
        training.build_trainer(cfg, [], False, tmp_path)
        assert torch.backends.cudnn.benchmark is autotune
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False


def test_slurm_requeue_left_to_the_job_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under SLURM, Lightning's auto-requeue (a mid-epoch hpc checkpoint on SIGUSR1) is off: ours stops at an epoch
    boundary instead (callbacks/preemption.py)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "123", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(key, value)
    cfg = compose_config("train", ["logger=none", "trainer.accelerator=cpu"])
    try:
        trainer = training.build_trainer(cfg, [], False, tmp_path)
    finally:
        torch.backends.cudnn.benchmark = False
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
