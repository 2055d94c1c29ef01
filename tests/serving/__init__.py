"""Helpers for the serving tests: a real bcc-serve process on a free localhost port, always shut down."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from bcc_lightning.serving import process as serving_process
from tests.conftest import REPO, subprocess_env

START_TIMEOUT = 180  # seconds: two spawned processes import torch on a busy 2-core machine


def best_ckpt(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["checkpoint"])


@contextlib.contextmanager
def running_server(ckpt: Path, workdir: Path, *overrides: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """bcc_lightning.serving.process.running_server on the CPU, with the tests' environment (offline hubs, this
    checkout on the path)."""
    environment = {**subprocess_env(), "PYTHONPATH": str(REPO), **(env or {})}
    with serving_process.running_server(ckpt, workdir, "trainer.accelerator=cpu", *overrides, env=environment,
                                        start_timeout=START_TIMEOUT) as url:
        yield url
