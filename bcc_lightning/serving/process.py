"""A bcc-serve process on a free localhost port, for scripts and tests: started in its own process group, waited
for until /health answers, and always shut down (SIGINT to the group, as Ctrl+C does, then SIGKILL); and what its
processes are and hold (Linux /proc)."""

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


def stop_server(process: subprocess.Popen) -> None:
    """Ctrl+C to the whole process group (LitServe shuts its workers down on it), then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def start_server(ckpt: Path, workdir: Path, *overrides: str, env: dict[str, str] | None = None,
                 start_timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """Start `bcc-serve ckpt=... port=<free>` in a process group of its own; return it and its base URL once /health
    says ok. Its output goes to workdir/serve_<port>.log, which a failure to start quotes. The caller stops it."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"serve_{port}.log"
    command = [sys.executable, "-m", "bcc_lightning.tasks.serve", f"ckpt={ckpt}", f"port={port}",
               f"hydra.run.dir={workdir / f'serve_{port}'}", *overrides]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=workdir, env={**os.environ, **(env or {})}, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url, start_timeout)
    except BaseException:
        stop_server(process)
        raise
    return process, url


def wait_healthy(process: subprocess.Popen, url: str, timeout: float) -> None:
    """Until GET /health answers ok, or RuntimeError (with the log's tail) if the server exits or takes too long."""
    log = getattr(process, "log", None)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bcc-serve exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"bcc-serve not healthy after {timeout} s:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        time.sleep(0.3)


def _tail(log: Path | None) -> str:
    return log.read_text()[-3000:] if log is not None and log.is_file() else ""


@contextlib.contextmanager
def running_server(ckpt: Path, workdir: Path, *overrides: str, env: dict[str, str] | None = None,
                   start_timeout: float = 180) -> Iterator[str]:
    """start_server as a context: yields the base URL, and always stops the server."""
    process, url = start_server(ckpt, workdir, *overrides, env=env, start_timeout=start_timeout)
    try:
        yield url
    finally:
        stop_server(process)


def group_processes(pgid: int) -> dict[int, str]:
    """pid -> command line of every live process in process group `pgid` (a server started by start_server leads
    its own group, and LitServe's processes stay in it). Linux only: empty elsewhere."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return found


def worker_pids(pgid: int) -> list[int]:
    """The inference workers of the server leading group `pgid` (LitServe spawns them: a fresh interpreter)."""
    return sorted(pid for pid, command in group_processes(pgid).items() if "multiprocessing.spawn" in command)


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A /proc/<pid>/status memory field in MB: VmRSS (now) or VmHWM (the process's peak); nan if unreadable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")
