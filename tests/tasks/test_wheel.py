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


def console_scripts() -> dict[str, str]:
    """pyproject.toml's [project.scripts] (read by hand: tomllib is Python 3.11+, and 3.10 is supported)."""
    text = (REPO / "pyproject.toml").read_text().split("[project.scripts]\n", 1)[1].split("\n[", 1)[0]
    pairs = [line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")]
    scripts = {name.strip(): target.strip().strip('"') for name, target in pairs}
    assert "bcc-train" in scripts, text
    return scripts


def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path: Path) -> None:
    """What packaging can break: a module or config left out, an entry point that does not resolve, configs not
    found from the installed copy. Checked file by file, then two commands run for real (bcc-train, bcc-predict);
    what the other commands do is tested in-process elsewhere, and their modules and configs here."""
    wheel = build_wheel(tmp_path)
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "bcc_lightning").rglob("*.py")
               if "__pycache__" not in p.parts}
    configs = {"bcc_lightning/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert "bcc_lightning/conf/train.yaml" in configs and "bcc_lightning/conf/model/densenet121.yaml" in configs
    missing = sorted((modules | configs) - names)
    assert not missing, f"files of the checkout that the wheel leaves out: {missing}"
    scripts = console_scripts()
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert all(f"{name} = {target}" in archive.read(entry_points).decode() for name, target in scripts.items())

    bin_dir, env = isolated_env(tmp_path, wheel)
    empty = tmp_path / "empty"
    empty.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=empty, env=env, capture_output=True,
                                text=True, timeout=TIMEOUT)
        assert result.returncode == 0, f"{args[0]}: " + result.stdout[-2000:] + result.stderr[-3000:]
        return result

    # The installed copy, and nothing of the checkout: no editable finder, every module from the venv. One process
    # imports every task module and loads every console script (each command's own start would cost a torch import).
    probe = ("import sys, json, importlib, importlib.metadata as md; "
             "assert not [f for f in sys.meta_path if 'editable' in type(f).__name__.lower()], sys.meta_path; "
             "from bcc_lightning.tasks.entry import TASKS; from bcc_lightning.utils.config import config_dir; "
             "files = [importlib.import_module(f'bcc_lightning.tasks.{m}').__file__ for m in TASKS.values()]; "
             "scripts = {e.name: callable(e.load()) for e in md.distribution('bcc-lightning').entry_points "
             "if e.group == 'console_scripts'}; "
             "print(json.dumps({'files': files, 'scripts': scripts, 'conf': str(config_dir())}))")
    found = json.loads(run("python", "-c", probe).stdout.strip().splitlines()[-1])
    assert all(Path(f).is_relative_to(tmp_path / "venv") for f in found["files"]), found["files"]
    assert found["scripts"] == {name: True for name in scripts}
    conf = Path(found["conf"])
    assert conf.is_relative_to(tmp_path / "venv") and (conf / "train.yaml").is_file(), conf

    tiny = ["data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true"]
    run("bcc-train", "experiment=demo", "trainer.max_epochs=1", "data.demo.n_per_class=12", "data.demo.size=32",
        "model.img_size=32", "data.batch_size=8", "report.cam_per_group=0", "report.grid_size=0", "logger=none",
        "callbacks.progress_bar=none", "data.audit=off", *tiny)
    assert (empty / "demo_data").is_dir()
    ckpt = next((empty / "outputs" / "demo").glob("*/checkpoints/last.ckpt"))
    run("bcc-predict", f"ckpt={ckpt}", "threshold=0.5", "input=demo_data/test", "out=preds.csv", *tiny)
    assert len((empty / "preds.csv").read_text().splitlines()) > 1
