"""The one guarded Hydra entry: compose conf/<task>.yaml, run `bcc_lightning.tasks.<module>.run(cfg)`.

A UserError becomes a one-paragraph message and exit status 2, never a traceback; so does an override naming a key
the config lacks (with the close matches), or one Hydra's grammar cannot read (with how to quote it). A stop by
signal (utils.errors.Stopped, or Lightning's SIGTERM stop) exits with 128 + the signal number: 143 for SIGTERM, 138
for SIGUSR1; Ctrl+C with 130. Console scripts (bcc-train, ...), `train.py`/`eval.py` and `python -m
bcc_lightning.tasks.<task>` all come through `main`.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import os
import signal
import sys
import textwrap
import warnings
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from bcc_lightning.utils.config import config_dir, override_syntax_message, unknown_key_message
from bcc_lightning.utils.errors import Stopped, UserError

# console script / config name -> module under bcc_lightning.tasks
TASKS = {"train": "train", "eval": "evaluate", "predict": "predict", "export": "export", "prepare": "prepare",
         "bench": "bench", "aggregate": "aggregate", "demo": "demo", "audit": "audit", "compare": "compare",
         "serve": "serve", "probe": "probe"}


def _quiet_libraries() -> None:
    # Messages a user can do nothing about (Lightning's tips on workers and tensor cores) bury the useful ones.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in record.getMessage().lower())


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=110, break_long_words=False, break_on_hyphens=False)


def guarded(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    def wrapper(cfg: DictConfig) -> Any:
        _quiet_libraries()
        try:
            return task(cfg)
        except UserError as exc:
            logging.getLogger("bcc_lightning").debug("user error", exc_info=True)
            print(f"\nerror: {_paragraph(str(exc))}", file=sys.stderr)
            sys.exit(2)
        except Stopped as exc:
            print(f"\n{_paragraph(exc.message)}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except SystemExit as exc:
            # Lightning's loops raise SIGTERMException (a SystemExit with code None, i.e. status 0) on SIGTERM.
            if type(exc).__name__ != "SIGTERMException":
                raise
            print("\nStopped by SIGTERM. Files already written are complete.", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            print("\nInterrupted. Files already written are complete; last.ckpt holds the last finished epoch.",
                  file=sys.stderr)
            sys.exit(130)

    return wrapper


class _HeldStderr:
    """Holds what Hydra writes to stderr until the task starts, so that a mistyped key is reported as one paragraph
    with its close matches instead of Hydra's lines; afterwards everything passes straight through."""

    def __init__(self, real: Any) -> None:
        self.real, self.held, self._text = real, True, io.StringIO()

    def write(self, text: str) -> int:
        return self._text.write(text) if self.held else self.real.write(text)

    def flush(self) -> None:
        if not self.held:
            self.real.flush()

    def release(self, show: bool = True) -> None:
        if self.held:
            self.held = False
            if show:
                self.real.write(self._text.getvalue())
                self.real.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the real stream's
        return getattr(self.real, name)


_HELD: _HeldStderr | None = None  # this process's held stderr while Hydra composes (None in a launcher's job)


def _pass_stderr_through() -> None:
    """The task has started, so Hydra composed the config: stderr passes straight through from now on."""
    held = _HELD
    if held is not None:
        if sys.stderr is held:
            sys.stderr = held.real
        held.release()


class _Started:
    """The task as Hydra calls it. A module-level class rather than a closure, because launchers that run jobs in
    other processes (submitit, for SLURM) pickle it, and a closure would carry the open stderr stream with it."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def __call__(self, cfg: DictConfig) -> Any:
        _pass_stderr_through()
        return self.task(cfg)


def _overrides(config_name: str, argv: list[str]) -> list[str] | None:
    """The command line's overrides, or None when it picks another config (-cn/-cp/-cd) or asks for help."""
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:
        return None
    if args.config_name not in (None, config_name) or args.config_path or args.config_dir or args.help:
        return None
    return list(args.overrides)


def main(config_name: str) -> Any:
    """Run one task under Hydra (the task module is imported late, so `--help` stays fast)."""
    configs = config_dir()
    if not (configs / f"{config_name}.yaml").is_file():
        sys.exit(f"error: the configs are missing from {configs}; reinstall bcc-lightning (`pip install .` or the "
                 f"wheel) so that its conf/ is installed with it.")
    global _HELD
    task = guarded(importlib.import_module(f"bcc_lightning.tasks.{TASKS[config_name]}").run)
    real_stderr = sys.stderr
    held = _HELD = _HeldStderr(real_stderr)
    sys.stderr = held
    try:
        return hydra.main(version_base="1.3", config_path=str(configs), config_name=config_name)(_Started(task))()
    except SystemExit as exc:
        if held.held and exc.code not in (0, None):  # Hydra failed before the task started: composing the config
            overrides = _overrides(config_name, sys.argv[1:])
            hint = (override_syntax_message(overrides) or unknown_key_message(config_name, overrides)
                    if overrides else None)
            if hint:
                held.release(show=False)
                print(f"error: {_paragraph(hint)}", file=real_stderr)
                sys.exit(2)
        raise
    finally:
        if sys.stderr is held:
            sys.stderr = real_stderr
        held.release()


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
probe = functools.partial(main, "probe")
