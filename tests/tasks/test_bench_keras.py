"""The Keras peer script (benchmarks/bench_keras.py): bad input and a Python without TensorFlow end in one clear
line and exit code 2; bcc-bench finds it by path."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from bcc_lightning.tasks import bench
from bcc_lightning.utils.errors import UserError
from tests.conftest import make_folder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_keras.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_importing_loads_neither_tensorflow_nor_torch() -> None:
    """Linting and test collection import it in the project's Python; bcc-bench runs it in TensorFlow's."""
    check = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='peer'); "
             "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]"


def test_bcc_bench_runs_the_peer_from_benchmarks() -> None:
    """bcc-bench runs the script by this path and reads its recipe table from it (no task imports it)."""
    assert bench.KERAS_PEER == SCRIPT and SCRIPT.is_file()
    assert set(bench.keras_peer().RECIPES) == {"mobilenetv2", "densenet121", "inceptionv3"}


def test_a_wheel_without_the_peer_is_told_where_it_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed wheel carries no benchmarks/: keras_python= then stops with one paragraph, not a traceback."""
    monkeypatch.setattr(bench, "KERAS_PEER", tmp_path / "benchmarks" / "bench_keras.py")
    with pytest.raises(UserError, match="source checkout's benchmarks/ folder"):
        bench.keras_peer()


@pytest.mark.parametrize("missing", ["root", "val/M"])
def test_bad_folders_are_named(tmp_path: Path, missing: str) -> None:
    root = make_folder(tmp_path / "root", per_class=1, splits=("train", "val"), ext="jpg")
    target = tmp_path / "nope" if missing == "root" else root
    if missing != "root":
        for image in (root / missing).iterdir():
            image.unlink()
        (root / missing).rmdir()
    done = _run("--root", str(target))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (str(target) if missing == "root" else "val/M") in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed here")
def test_a_python_without_tensorflow_is_told_what_to_install(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "root", per_class=1, splits=("train", "val"), ext="jpg")
    done = _run("--root", str(root), "--epochs", "1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "tensorflow-cpu" in done.stderr
