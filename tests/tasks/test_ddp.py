"""DDP with two CPU processes gives the same validation metrics as one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env


def test_ddp_two_cpu_processes_match_one(demo_root: Path, tmp_path: Path, trained_run: Path) -> None:
    ckpt = json.loads((trained_run / "metrics.json").read_text())["checkpoint"]
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"ddp{devices}.json"
        script = REPO / "tests" / "tasks" / "ddp_validate.py"
        proc = subprocess.run([sys.executable, str(script), ckpt, str(demo_root), str(devices), str(out)],
                              env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[devices] = json.loads(out.read_text())
    assert results[2]["world_size"] == 2
    for key in ("val/loss", "val/acc", "val/auroc", "val/f1"):
        assert results[2][key] == pytest.approx(results[1][key], abs=1e-5), key
