"""Helpers for the serving tests: a real bcc-serve process on a free localhost port, always shut down, and images
that are small files but huge pictures."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

from bcc_lightning.serving import process as serving_process
from tests.conftest import REPO, subprocess_env

START_TIMEOUT = 180  # seconds: two spawned processes import torch on a busy 2-core machine


def best_ckpt(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["checkpoint"])


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    return {**subprocess_env(), "PYTHONPATH": str(REPO), **(env or {})}


@contextlib.contextmanager
def running_server(ckpt: Path, workdir: Path, *overrides: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """bcc_lightning.serving.process.running_server on the CPU, with the tests' environment (offline hubs, this
    checkout on the path)."""
    with serving_process.running_server(ckpt, workdir, "trainer.accelerator=cpu", *overrides, env=_environment(env),
                                        start_timeout=START_TIMEOUT) as url:
        yield url


@contextlib.contextmanager
def server_process(ckpt: Path, workdir: Path, *overrides: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """As running_server, but yields the server's main process too (it leads its own process group), for tests
    that signal it; whatever is left of it is stopped at the end."""
    process, url = serving_process.start_server(ckpt, workdir, "trainer.accelerator=cpu", *overrides,
                                                env=_environment(None), start_timeout=START_TIMEOUT)
    try:
        yield process, url
    finally:
        serving_process.stop_server(process)


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of width x height black pixels, written without ever holding them: 9400x9400 is 86 KB
    and 1x88,000,000 is 171 KB (both under Pillow's bomb limit of about 89 megapixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(width + 1)  # filter byte 0, then the row's pixels
    rows_per_block = max(1, 2**20 // len(row))
    compressor, parts = zlib.compressobj(6), []
    full, rest = divmod(height, rows_per_block)
    block = row * rows_per_block
    parts += [compressor.compress(block) for _ in range(full)]
    parts += [compressor.compress(row * rest), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
