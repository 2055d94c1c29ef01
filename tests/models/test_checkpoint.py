"""Checkpoints: atomic writes; a checkpoint of the code before the reorganisation still evaluates the same."""

import csv
import json
from pathlib import Path

import pytest
import torch

from bcc_lightning.models.checkpoint import AtomicCheckpointIO


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


def test_checkpoint_from_before_the_reorganisation_evaluates_identically(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/fixtures/old_checkpoint: written and evaluated by the code before the package was reorganised (no
    preprocessing in its hyperparameters, the old predictions.csv schema)."""
    from bcc_lightning.reports.metrics import read_metrics
    from bcc_lightning.tasks import evaluate
    from tests.conftest import REPO, compose_config

    fixture = REPO / "tests" / "fixtures" / "old_checkpoint"
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("eval", [f"ckpt={fixture / 'model.ckpt'}", f"data.root={fixture / 'data'}",
                                  "data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true",
                                  "report.cam_per_group=1"])
    result = evaluate.run(cfg)
    # Its old spellings (sensitivity beside recall) are mapped on read, as for any old metrics.json.
    expected = read_metrics(json.loads((fixture / "expected_metrics.json").read_text())["metrics"])
    for key, value in expected.items():
        assert result["metrics"][key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key
    old = {row["path"]: float(row["prob_malignant"]) for row in csv.DictReader(
        (fixture / "expected_predictions.csv").open())}
    new = {row["path"]: float(row["prob_malignant"]) for row in csv.DictReader((tmp_path / "predictions.csv").open())}
    assert new.keys() == old.keys() and all(abs(new[k] - old[k]) < 2e-6 for k in old)
