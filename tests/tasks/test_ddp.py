"""DDP with two CPU processes gives the same validation metrics as one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env
from tests.tasks.ddp_validate import validate


def test_ddp_two_cpu_processes_match_one(demo_root: Path, tmp_path: Path, trained_run: Path) -> None:
    ckpt = json.loads((trained_run / "metrics.json").read_text())["checkpoint"]
    single = validate(ckpt, str(demo_root), 1)  # in-process: only the DDP run needs processes of its own
    out = tmp_path / "ddp2.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "tasks" / "ddp_validate.py"), ckpt, str(demo_root),
                           "2", str(out)], env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    for key in ("val/loss", "val/acc", "val/auroc", "val/f1"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-5), key
