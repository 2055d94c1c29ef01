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
