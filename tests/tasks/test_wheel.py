"""The package as a user gets it: a wheel installed where the checkout cannot stand in, run from an empty folder.

The checkout is installed in editable mode for the tests, and its import finder serves any module of the checkout,
including a directory that the wheel leaves out. So the wheel goes into a fresh virtual environment (no pip, no
editable finder) that sees the test environment's dependencies through one `.pth` line naming their site-packages
folder: a path line in a `.pth` file adds that folder to sys.path but does not process the `.pth` files inside it,
so the editable install's finder never runs there. (Checked by hand: with `bcc_lightning/callbacks/__init__.py`
removed from the copied sources, this test fails at `bcc-train` with "No module named 'bcc_lightning.callbacks'".)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.conftest import REPO

TIMEOUT = 600


def build_wheel(tmp_path: Path) -> Path:
    source, dist = tmp_path / "source", tmp_path / "dist"
    for name in ("pyproject.toml", "setup.py", "README.md"):  # a copy: building must not write into the checkout
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for name in ("bcc_lightning", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                            str(source)], capture_output=True, text=True, timeout=TIMEOUT)
    assert build.returncode == 0, build.stderr[-3000:]
    return next(dist.glob("bcc_lightning-*.whl"))


def isolated_env(tmp_path: Path, wheel: Path) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel installed (console scripts included) and the dependencies visible; returns its
    bin folder and the environment to run it in."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (Path(purelib) / "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(deps)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"})
    # pip itself comes from the dependencies' folder; it installs into the venv it runs in.
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                             capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    return venv / "bin", env


def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "bcc_lightning/conf/train.yaml" in names and "bcc_lightning/conf/model/densenet121.yaml" in names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "bcc_lightning").rglob("*.py")
               if "__pycache__" not in p.parts}
    missing = sorted(modules - names)
    assert not missing, f"modules of the checkout that the wheel leaves out: {missing}"

    bin_dir, env = isolated_env(tmp_path, wheel)
    empty = tmp_path / "empty"
    empty.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=empty, env=env, capture_output=True,
                                text=True, timeout=TIMEOUT)
        assert result.returncode == 0, f"{args[0]}: " + result.stdout[-2000:] + result.stderr[-3000:]
        return result

    # The installed copy, and nothing of the checkout: no editable finder, every module from the venv.
    probe = ("import sys, importlib.util; "  # find_spec: located, not executed (no torch import here)
             "assert not [f for f in sys.meta_path if 'editable' in type(f).__name__.lower()], sys.meta_path; "
             "print(importlib.util.find_spec('bcc_lightning.callbacks.history').origin)")
    where = Path(run("python", "-c", probe).stdout.strip())
    assert where.is_relative_to(tmp_path / "venv"), where

    tiny = ["data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    run("bcc-train", "experiment=demo", "trainer.max_epochs=1", "data.demo.n_per_class=12", "data.demo.size=32",
        "model.img_size=32", "data.batch_size=8", "report.cam_per_group=0", "report.grid_size=0", "logger=none",
        "callbacks.progress_bar=none", "data.audit=off", *tiny)
    assert (empty / "demo_data").is_dir()
    ckpt = next((empty / "outputs" / "demo").glob("*/checkpoints/last.ckpt"))
    evaluated = run("bcc-eval", f"ckpt={ckpt}", "threshold=youden", "save_to=model.ckpt", "report.cam_per_group=0",
                    "report.grid_size=0", "data.audit=off", *tiny)
    assert "model.ckpt" in evaluated.stdout and (empty / "model.ckpt").is_file()
    predicted = run("bcc-predict", "ckpt=model.ckpt", "input=demo_data/test", "out=preds.csv", *tiny)
    assert "youden" in predicted.stdout and len((empty / "preds.csv").read_text().splitlines()) > 1
    run("bcc-export", "ckpt=model.ckpt", "out=model.onnx")
    sidecar = json.loads((empty / "model.onnx.json").read_text())
    assert sidecar["operating_point"]["method"] == "youden" and sidecar["parity"]["max_abs_diff"] < 1e-4
