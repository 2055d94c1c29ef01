"""The package as a user gets it: a wheel installed without the source tree, run from an empty folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_wheel_trains_from_an_empty_folder(tmp_path: Path) -> None:
    source, dist = tmp_path / "source", tmp_path / "dist"
    for name in ("pyproject.toml", "setup.py", "README.md"):  # a copy: building must not write into the checkout
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for name in ("bcc_lightning", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(dist.glob("bcc_lightning-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "bcc_lightning/conf/train.yaml" in names and "bcc_lightning/conf/model/densenet121.yaml" in names
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    # Only the installed copy is importable: the repository is neither the working folder nor on the path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"})
    code = ("import sys, bcc_lightning; assert 'site' in bcc_lightning.__file__, bcc_lightning.__file__; "
            "sys.argv = ['bcc-train'] + sys.argv[1:]; from bcc_lightning.tasks.entry import train; train()")
    run = subprocess.run([sys.executable, "-c", code, "experiment=demo", "trainer.fast_dev_run=true",
                          "data.num_workers=0", "data.demo.n_per_class=12", "data.demo.size=32", "model.img_size=32",
                          "report.cam_per_group=0", "report.grid_size=0", "logger=none"],
                         cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "Test (" in run.stdout and (empty / "demo_data").is_dir()
