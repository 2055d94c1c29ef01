"""Shared fixtures: composed configs, tiny generated image folders, offline hubs."""

from __future__ import annotations

import atexit
import csv
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

from bcc_lightning.data.demo import generate
from bcc_lightning.data.prepare import PrepareSettings, prepare
from bcc_lightning.utils.config import config_dir

REPO = Path(__file__).resolve().parent.parent

# Tests never touch the network: the hubs answer from the cache or fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_USE_HF_HUB", "0")
# data.cache=auto (the default) and the audit's descriptors write into the user cache folder: tests use their own.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="bcc_test_cache_")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)  # each pytest process its own
# pytest-xdist (2 workers, set by the root conftest.py) runs one worker per core: one torch/OpenMP thread each,
# passed on to the commands the tests start. More threads than cores spin and wait (a tiny training run on 2 busy
# cores: 192 s with 2 threads, 38 s with 1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def compose_config(name: str = "train", overrides: list[str] | None = None, hydra: bool = False) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name=name, overrides=overrides or [], return_hydra_config=hydra)


# What a training run does besides training, and costs more than the tiny training itself (Grad-CAM overlays, the
# predictions grid, the leakage audit's matching): off unless a test asks for it; trained_run keeps the full report.
LEAN = ["report.cam_per_group=0", "report.grid_size=0", "data.audit=off"]


def tiny_train_config(root: Path, overrides: list[str] | None = None, lean: bool = True) -> DictConfig:
    """A config that trains in seconds on CPU: small images, fp32, no bars, no workers (and LEAN unless lean=False;
    `overrides` win over both)."""
    cfg = compose_config("train", [
        f"data.root={root}", "data.num_workers=0", "data.batch_size=8", "model.img_size=64", "model.pretrained=false",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_epochs=1",
        "callbacks.progress_bar=none", "trainer.enable_model_summary=false", "optimizer.lr=1e-3",
        *(LEAN if lean else []), *(overrides or []),
    ])
    with open_dict(cfg):
        cfg.trainer.enable_model_summary = False
    return cfg


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (20 images per class, 64 px), made once per test session."""
    return generate(tmp_path_factory.mktemp("demo") / "demo_data", n_per_class=20, size=64, seed=1)


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), seed: int = 0,
                fmt: str | None = None) -> Path:
    """A random image in any PIL mode; 16-bit modes get values above 255."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 60000, (h, w), dtype=np.uint16))
    elif mode == "F":
        image = Image.fromarray(rng.random((h, w), dtype=np.float32) * 1000)
    else:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    image.save(path, format=fmt)
    return path


def make_folder(root: Path, per_class: int = 4, splits: tuple[str, ...] = ("train", "val", "test"),
                names: tuple[str, str] = ("B", "M"), ext: str = "png") -> Path:
    """root/{split}/{B,M}/*.ext with random images."""
    for split in splits:
        for label, name in enumerate(names):
            for i in range(per_class):
                write_image(root / split / name / f"img{i}.{ext}", seed=hash((split, label, i)) % 2**31)
    return root


@pytest.fixture(scope="session")
def trained_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny training run (2 epochs, 64 px, the full report and audit) shared by the evaluation, predict, export
    and serving tests."""
    from bcc_lightning.tasks import train as training

    run = tmp_path_factory.mktemp("trained_run")
    run_in(run, training.run, tiny_train_config(demo_root, ["trainer.max_epochs=2", "logger=tensorboard"], lean=False))
    return run


DETERMINISTIC = ["trainer.deterministic=true", "data.num_workers=0", "trainer.precision=32-true",
                 "trainer.accelerator=cpu", "model.img_size=48", "data.batch_size=4", "optimizer.lr=1e-3",
                 "callbacks=none", "report.cam_per_group=0", "report.grid_size=0", "logger=csv"]


def run_in(folder: Path, fn, *args):  # noqa: ANN001, ANN201
    """fn(*args) with `folder` (created) as the working directory: tasks write their run under the cwd."""
    previous = Path.cwd()
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)
    try:
        return fn(*args)
    finally:
        os.chdir(previous)


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def history_rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "history.csv").open()))


# ---------------------------------------------------------------------------------------------- raw folders

def breakhis_tree(root: Path, patients: int = 6, per_patient: int = 5) -> Path:
    """root/{benign,malignant}/SOB/<type>/SOB_<c>_<type>-14-<id>/40X/SOB_<c>_<type>-14-<id>-40-NNN.png"""
    for label, (cls, tumour) in enumerate((("benign", "A"), ("malignant", "DC"))):
        for p in range(patients):
            pid = f"{label}{p:03d}{'F' if p % 2 else 'CD'}"
            folder = root / cls / "SOB" / tumour / f"SOB_{cls[0].upper()}_{tumour}-14-{pid}" / "40X"
            for i in range(per_patient):
                name = f"SOB_{cls[0].upper()}_{tumour}-14-{pid}-40-{i:03d}.png"
                write_image(folder / name, size=(35, 23), seed=label * 10000 + p * 100 + i)
    return root


def flat_tree(root: Path, per_class: int = 20) -> Path:
    for label, cls in enumerate(("B", "M")):
        for i in range(per_class):
            write_image(root / cls / f"{cls}_{i:03d}.jpg", size=(30, 20), seed=label * 1000 + i, fmt="JPEG")
    return root


def read_manifest(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "manifest.csv").open()))


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
            h.update(str(path.stat().st_mtime_ns).encode())
    return h.hexdigest()


def run_prepare(raw: Path, out: Path, **kwargs) -> dict:
    return prepare(PrepareSettings(raw=str(raw), out=str(out), **kwargs), log=lambda message: None)
