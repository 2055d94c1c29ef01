"""train.py's data.audit=warn|error|off: copies across splits are reported in metrics.json, or stop the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import tiny_train_config
from tests.data.test_audit import leaky_folder

FAST = ["trainer.fast_dev_run=true", "logger=none", "report.cam_per_group=0", "report.grid_size=0"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # descriptors go to default_cache_dir()
    monkeypatch.chdir(tmp_path)


def test_leaky_split_warns_and_records_the_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = leaky_folder(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        training.run(tiny_train_config(root, [*FAST, "data.audit=warn"]))
    assert any("LEAKAGE" in r.getMessage() and "have a copy in train" in r.getMessage() for r in caplog.records)
    for path in (tmp_path / "metrics.json", tmp_path / "test" / "metrics.json"):
        leakage = json.loads(path.read_text())["leakage"]
        assert leakage["test_with_copy_in_train"] == 2 and leakage["val_with_copy_in_train"] == 1
        assert not leakage["clean"] and "group=content" in leakage["verdict"]
    assert (tmp_path / "xdg" / "bcc_lightning" / "descriptors").is_dir()


def test_audit_error_stops_before_training(tmp_path: Path) -> None:
    root = leaky_folder(tmp_path / "data")
    with pytest.raises(UserError, match="have a copy in train.*stopped before training because data.audit=error"):
        training.run(tiny_train_config(root, [*FAST, "data.audit=error"]))
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "metrics.json").exists()


def test_audit_off_and_demo_is_clean(tmp_path: Path, demo_root: Path) -> None:
    training.run(tiny_train_config(demo_root, [*FAST, "data.audit=error"]))
    leakage = json.loads((tmp_path / "metrics.json").read_text())["leakage"]
    assert leakage["clean"] and leakage["n_test"] > 0
    training.run(tiny_train_config(demo_root, [*FAST, "data.audit=off"]))
    assert "leakage" not in json.loads((tmp_path / "metrics.json").read_text())
    with pytest.raises(UserError, match="data.audit must be one of"):
        training.run(tiny_train_config(demo_root, [*FAST, "data.audit=maybe"]))
