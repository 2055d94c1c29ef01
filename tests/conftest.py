"""Shared fixtures: composed configs, tiny generated image folders, offline hubs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

from bcc_lightning.cli import CONFIG_DIR
from bcc_lightning.data.demo import generate

REPO = Path(__file__).resolve().parent.parent

# Tests never touch the network: the hubs answer from the cache or fail at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_USE_HF_HUB", "0")


def compose_config(name: str = "train", overrides: list[str] | None = None, hydra: bool = False) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose(config_name=name, overrides=overrides or [], return_hydra_config=hydra)


def tiny_train_config(root: Path, overrides: list[str] | None = None) -> DictConfig:
    """A config that trains in seconds on CPU: small images, fp32, no bars, no workers."""
    cfg = compose_config("train", [
        f"data.root={root}", "data.num_workers=0", "data.batch_size=8", "model.img_size=64",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_epochs=1",
        "callbacks.progress_bar=none", "trainer.enable_model_summary=false", "optimizer.lr=1e-3",
        *(overrides or []),
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
    """One tiny training run (2 epochs, 64 px) shared by the evaluation, predict and export tests."""
    from bcc_lightning import training

    run = tmp_path_factory.mktemp("trained_run")
    previous = Path.cwd()
    os.chdir(run)
    try:
        training.run(tiny_train_config(demo_root, ["trainer.max_epochs=2", "logger=tensorboard"]))
    finally:
        os.chdir(previous)
    return run
