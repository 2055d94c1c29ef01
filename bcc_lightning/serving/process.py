"""A bcc-serve process on a free localhost port, for scripts and tests: started in its own process group, waited
for until /health answers, and always shut down (SIGINT to the group, as Ctrl+C does, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
def running_server(ckpt: Path, workdir: Path, *overrides: str, env: dict[str, str] | None = None,
                   start_timeout: float = 180) -> Iterator[str]:
    """Start `bcc-serve ckpt=... port=<free>`; yield its base URL once /health says ok. Its output goes to
    workdir/serve_<port>.log, which a failure to start quotes."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"serve_{port}.log"
    command = [sys.executable, "-m", "bcc_lightning.tasks.serve", f"ckpt={ckpt}", f"port={port}",
               f"hydra.run.dir={workdir / f'serve_{port}'}", *overrides]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=workdir, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bcc-serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"bcc-serve not healthy after {start_timeout} s:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200 and response.read().strip() == b"ok":
                        break
            time.sleep(0.5)
        yield url
    finally:
        _stop(process)
