"""Hydra entry points (`train.py`, `eval.py`, `bcc-train`, `bcc-eval`): compose the config, run one task.

A UserError becomes a one-paragraph message and exit status 2, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bcc_lightning.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def _quiet_libraries() -> None:
    # Messages a user can do nothing about (Lightning's tips on workers and tensor cores) bury the useful ones.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in record.getMessage().lower())


def guarded(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    def wrapper(cfg: DictConfig) -> Any:
        _quiet_libraries()
        try:
            return task(cfg)
        except UserError as exc:
            logging.getLogger("bcc_lightning").debug("user error", exc_info=True)
            message = textwrap.fill(str(exc), width=110, break_long_words=False, break_on_hyphens=False)
            print(f"\nerror: {message}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("\nInterrupted. Files already written are complete; last.ckpt holds the last finished epoch.",
                  file=sys.stderr)
            sys.exit(130)

    return wrapper


def hydra_entry(config_name: str, task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        def missing() -> None:
            sys.exit(f"error: configs not found in {CONFIG_DIR}; install the package from its repository with "
                     f"`pip install -e .` so that conf/ is available.")
        return missing
    return hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(guarded(task))


def _task(config_name: str, module: str) -> Any:
    """Run `bcc_lightning.<module>.run` under Hydra with conf/<config_name>.yaml (imported late: fast --help)."""
    return hydra_entry(config_name, importlib.import_module(f"bcc_lightning.{module}").run)()


def train() -> Any:
    return _task("train", "training")


def evaluate() -> Any:
    return _task("eval", "evaluation")


def prepare() -> Any:
    return _task("prepare", "prepare")


def predict() -> Any:
    return _task("predict", "predict")


def export() -> Any:
    return _task("export", "export")


def bench() -> Any:
    return _task("bench", "bench")
