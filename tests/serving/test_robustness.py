"""bcc-serve against hostile uploads and signals, over real HTTP on localhost: huge-picture PNGs refused before the
worker decodes them, bad and good uploads mixed under load, a SIGKILLed worker, SIGTERM and SIGINT. One server
serves the tests in file order and is stopped by the SIGTERM test; the SIGINT test starts its own."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from PIL import Image

from bcc_lightning.serving.process import group_processes, memory_mb, wait_healthy, worker_pids
from tests.conftest import write_image
from tests.serving import START_TIMEOUT, best_ckpt, png_of_zeros, server_process

TIMEOUT = 60  # seconds per request on a busy machine, never a hang
STOPPED_WITHIN = 10  # seconds from the signal to no process of the server left
SETTINGS = ("threshold=0.5", "tta=false", "trainer.precision=32-true", "max_batch_size=8", "batch_timeout=0.05",
            "max_request_megapixels=2", "worker_restarts=2")


@pytest.fixture(scope="module")
def served(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, str]]:
    with server_process(best_ckpt(trained_run), tmp_path_factory.mktemp("serve"), *SETTINGS) as server:
        yield server


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"square.png": png_of_zeros(9400, 9400), "strip.png": png_of_zeros(1, 88_000_000)}


def post(url: str, *files: tuple[str, bytes]) -> requests.Response:
    return requests.post(f"{url}/predict", files=[("file", f) for f in files], timeout=TIMEOUT)


def grey_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 90).save(buffer, format="PNG")
    return buffer.getvalue()


def test_huge_pictures_get_413_before_the_worker_decodes_them(served: tuple[subprocess.Popen, str],
                                                              bombs: dict[str, bytes], demo_root: Path) -> None:
    process, url = served
    [worker] = worker_pids(process.pid)
    good = sorted((demo_root / "test").rglob("*.png"))[0]
    assert post(url, (good.name, good.read_bytes())).status_code == 200
    idle, idle_peak = memory_mb(worker), memory_mb(worker, "VmHWM")
    for name, data in bombs.items():
        response = post(url, (name, data))
        assert response.status_code == 413, response.text
        assert "over the limit of" in response.json()["error"] and name in response.json()["error"]
    response = post(url, *[(f"b{i}.png", bombs["square.png"]) for i in range(8)])  # eight in one request
    assert response.status_code == 413 and "40 megapixels per image" in response.json()["error"]
    # The request's budget (2 megapixels here): two 1.2-megapixel images together are refused, one is scored.
    response = post(url, ("a.png", grey_png(1200, 1000)), ("b.png", grey_png(1200, 1000)))
    assert response.status_code == 413 and "max_request_megapixels" in response.json()["error"]
    assert post(url, ("a.png", grey_png(1200, 1000))).status_code == 200
    assert memory_mb(worker) < idle + 300 and memory_mb(worker, "VmHWM") < max(idle, idle_peak) + 300
    assert worker_pids(process.pid) == [worker]


def test_mixed_load_fails_no_good_request(served: tuple[subprocess.Popen, str], bombs: dict[str, bytes],
                                          demo_root: Path, tmp_path: Path) -> None:
    """Bad uploads among good ones at concurrency 8: LitServe batches them together, and only the bad fail (the
    truncated JPEG passes the header check and fails in the worker, inside a batch)."""
    _, url = served
    goods = [(p.name, p.read_bytes()) for p in sorted((demo_root / "test").rglob("*.png"))[:4]]
    expected = {name: post(url, (name, data)).json()[0]["prob_malignant"] for name, data in goods}
    jpeg = write_image(tmp_path / "x.jpg", size=(300, 200), fmt="JPEG").read_bytes()
    bads = [("square.png", bombs["square.png"]), ("strip.png", bombs["strip.png"]),
            ("cut.jpg", jpeg[: len(jpeg) // 2]), ("notes.txt", b"not pixels"), ("empty.png", b"")]
    jobs = [goods[i % len(goods)] for i in range(40)]
    for i, bad in enumerate(bads * 2):  # 10 bad among 40 good, spread through the run
        jobs.insert(4 * i + 2, bad)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: post(url, job), jobs))
    assert time.monotonic() - started < 240
    bad_names = {name for name, _ in bads}
    for (name, _), response in zip(jobs, answers):
        if name in bad_names:
            assert 400 <= response.status_code < 500 and response.json()["error"].startswith(name), response.text
        else:
            assert response.status_code == 200, (name, response.status_code, response.text)
            assert response.json()[0]["prob_malignant"] == pytest.approx(expected[name], abs=1e-5)


def test_a_killed_worker_is_replaced(served: tuple[subprocess.Popen, str], demo_root: Path) -> None:
    process, url = served
    [old] = worker_pids(process.pid)
    os.kill(old, signal.SIGKILL)  # what the kernel's out-of-memory killer does
    deadline = time.monotonic() + START_TIMEOUT
    while worker_pids(process.pid) in ([old], []) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # the new worker has registered as starting: /health says so until it is ready
    wait_healthy(process, url, max(1.0, deadline - time.monotonic()))
    good = sorted((demo_root / "test").rglob("*.png"))[0]
    assert post(url, (good.name, good.read_bytes())).status_code == 200
    assert process.poll() is None and old not in worker_pids(process.pid)
    assert "died (killed by SIGKILL" in process.log.read_text()


def _stopped_cleanly(process: subprocess.Popen, url: str, signum: int) -> None:
    """Within STOPPED_WITHIN s of `signum` to the main process alone: no process of the server left, exit status 0,
    the port free for the next server, no traceback."""
    assert len(group_processes(process.pid)) >= 4  # main, HTTP process, worker, manager (and resource tracker)
    started = time.monotonic()
    os.kill(process.pid, signum)
    while group_processes(process.pid) and time.monotonic() - started < STOPPED_WITHIN:
        time.sleep(0.1)
    left = group_processes(process.pid)
    assert not left, f"still running {time.monotonic() - started:.1f} s after {signum!r}: {left}"
    assert process.wait(timeout=1) == 0
    with socket.socket() as sock:  # as uvicorn binds: SO_REUSEADDR, so only a listener still there would block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        sock.listen()
    log = process.log.read_text()
    assert "Traceback" not in log and f"Stopped ({signal.Signals(signum).name})" in log, log[-2000:]


def test_sigterm_stops_every_process_and_frees_the_port(served: tuple[subprocess.Popen, str]) -> None:
    _stopped_cleanly(*served, signal.SIGTERM)


@pytest.mark.slow  # a second server start-up; SIGTERM's test above runs the same handler in the default suite
def test_sigint_stops_every_process_and_frees_the_port(trained_run: Path, tmp_path: Path) -> None:
    with server_process(best_ckpt(trained_run), tmp_path, "threshold=0.5", "tta=false") as (process, url):
        _stopped_cleanly(process, url, signal.SIGINT)
