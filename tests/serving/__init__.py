"""Helpers for the serving tests: a real bcc-serve process on a free localhost port, always shut down."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO, subprocess_env

START_TIMEOUT = 180  # seconds: two spawned processes import torch on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def best_ckpt(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["checkpoint"])


def _stop(process: subprocess.Popen) -> None:
    """Ctrl+C to the whole process group (LitServe shuts its workers down on it), then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@contextlib.contextmanager
def running_server(ckpt: Path, workdir: Path, *overrides: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `bcc-serve ckpt=... port=<free>` in its own process group; yield its base URL once /health says ok."""
    port = free_port()
    log = workdir / f"serve_{port}.log"
    command = [sys.executable, "-m", "bcc_lightning.tasks.serve", f"ckpt={ckpt}", f"port={port}",
               f"hydra.run.dir={workdir / f'serve_{port}'}", "trainer.accelerator=cpu", *overrides]
    with log.open("w") as out:
        environment = {**subprocess_env(), "PYTHONPATH": str(REPO), **(env or {})}
        process = subprocess.Popen(command, cwd=workdir, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"bcc-serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"bcc-serve not healthy after {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200 and response.read().strip() == b"ok":
                        break
            time.sleep(0.5)
        yield url
    finally:
        _stop(process)
