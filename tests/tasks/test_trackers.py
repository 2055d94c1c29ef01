"""Tracked runs and the model card: MLflow read back through its client, an offline W&B run, the card's fields."""

import json
from pathlib import Path

import pytest

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.atomic_io import sha256_file
from tests.conftest import tiny_train_config

FAST = ["trainer.max_epochs=2", "report.cam_per_group=0", "report.grid_size=0"]


def test_mlflow_run_holds_params_metrics_and_artifacts(demo_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    training.run(tiny_train_config(demo_root, ["logger=mlflow", *FAST]))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["model.name"] == "mobilenetv2" and run.data.params["data.batch_size"] == "8"
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2  # one per epoch
    assert "test/accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "model_card.md", "model_card.json", "report"} <= artifacts
    assert "report/report.md" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}


def test_wandb_is_offline_and_keeps_the_metrics(demo_root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    training.run(tiny_train_config(demo_root, ["logger=wandb", *FAST]))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # offline unless the user says otherwise: nothing left this machine
    records = next(runs[0].glob("*.wandb")).read_bytes()
    for key in (b"val/loss", b"train/loss", b"test/accuracy"):
        assert key in records


def test_model_card_fields_are_present_and_true(demo_root: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    training.run(tiny_train_config(demo_root, ["logger=none", "data.audit=warn", *FAST]))
    card = json.loads((tmp_path / "model_card.json").read_text())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert card["model"]["backbone"] == "mobilenetv2" and card["model"]["initialisation"] == "random"
    assert metrics["initialisation"] == "random"
    assert "initialisation: random" in (tmp_path / "test" / "report.md").read_text()
    assert card["checkpoint"]["sha256"] == sha256_file(metrics["checkpoint"])
    assert card["training_data"]["synthetic"] is True and card["evaluation_data"]["images"] == metrics["metrics"]["n"]
    assert card["evaluation_data"]["fingerprint"]["sha256"]
    assert card["metrics"]["accuracy"]["value"] == metrics["metrics"]["accuracy"]
    assert card["metrics"]["accuracy"]["method"] == metrics["metrics"]["intervals"]["accuracy"]["method"]
    assert card["leakage_audit"]["clean"] is True and "Research use only" in card["intended_use"]
    assert card["operating_point"]["threshold"] == metrics["metrics"]["threshold"]
    md = (tmp_path / "model_card.md").read_text()
    assert "Not a medical device" in md and "## Reproduce" in md and "SYNTHETIC" in md
