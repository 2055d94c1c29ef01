"""The one guarded Hydra entry: compose conf/<task>.yaml, run `bcc_lightning.tasks.<module>.run(cfg)`.

A UserError becomes a one-paragraph message and exit status 2, never a traceback. Console scripts (bcc-train, ...),
`train.py`/`eval.py` and `python -m bcc_lightning.tasks.<task>` all come through `main`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from bcc_lightning.utils.config import config_dir
from bcc_lightning.utils.errors import UserError

# console script / config name -> module under bcc_lightning.tasks
TASKS = {"train": "train", "eval": "evaluate", "predict": "predict", "export": "export", "prepare": "prepare",
         "bench": "bench", "aggregate": "aggregate", "demo": "demo", "audit": "audit", "compare": "compare",
         "serve": "serve"}


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


def main(config_name: str) -> Any:
    """Run one task under Hydra (the task module is imported late, so `--help` stays fast)."""
    configs = config_dir()
    if not (configs / f"{config_name}.yaml").is_file():
        sys.exit(f"error: the configs are missing from {configs}; reinstall bcc-lightning (`pip install .` or the "
                 f"wheel) so that its conf/ is installed with it.")
    task = importlib.import_module(f"bcc_lightning.tasks.{TASKS[config_name]}").run
    return hydra.main(version_base="1.3", config_path=str(configs), config_name=config_name)(guarded(task))()


# Console scripts (pyproject's [project.scripts]), train.py and eval.py: one callable per config name.
train = functools.partial(main, "train")
evaluate = functools.partial(main, "eval")
predict = functools.partial(main, "predict")
export = functools.partial(main, "export")
prepare = functools.partial(main, "prepare")
bench = functools.partial(main, "bench")
aggregate = functools.partial(main, "aggregate")
demo = functools.partial(main, "demo")
audit = functools.partial(main, "audit")
compare = functools.partial(main, "compare")
serve = functools.partial(main, "serve")
