"""Load test for bcc-serve: a fixed number of single-image requests at concurrency N, with dynamic batching and with
batch size 1; prints images/s, p50/p95 latency and the memory high-water mark (peak RSS of the inference worker and
of the server's other processes, from /proc/<pid>/status VmHWM) as a Markdown table.

    python benchmarks/serve_load.py --ckpt /tmp/serve_ckpt/checkpoints/last.ckpt --images demo_data/test
    python benchmarks/serve_load.py --ckpt ... --images ... --hostile 10   # 1 in 10 requests a huge-picture PNG

Each configuration starts its own server on a free localhost port (its own process group, always shut down).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bcc_lightning.serving.process import group_processes, memory_mb, start_server, stop_server, worker_pids


def png_of_zeros(width: int, height: int) -> bytes:
    """A black grey PNG of width x height, a few hundred KB at most: the uploads the budgets are for."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, compressor = bytes(width + 1), zlib.compressobj(6)
    per_block = max(1, 2**20 // len(row))
    full, rest = divmod(height, per_block)
    body = b"".join([compressor.compress(row * per_block) for _ in range(full)]
                    + [compressor.compress(row * rest), compressor.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def load(url: str, images: list[tuple[str, bytes]], n_requests: int, concurrency: int, timeout: float,
         hostile: int = 0) -> dict[str, float]:
    """n_requests POSTs of one image each, `concurrency` at a time; latencies in ms of the good ones, failures of
    good ones counted. hostile=N: every Nth request is a 9400x9400 or 1x88,000,000 PNG instead (must get a 4xx)."""
    bombs = [("square.png", png_of_zeros(9400, 9400)), ("strip.png", png_of_zeros(1, 88_000_000))]

    def one(i: int) -> tuple[bool, float | None]:
        bad = hostile > 0 and i % hostile == hostile - 1
        name, data = bombs[i // hostile % 2] if bad else images[i % len(images)]
        start = time.perf_counter()
        try:
            response = requests.post(f"{url}/predict", files=[("file", (name, data, "image/png"))], timeout=timeout)
        except requests.RequestException:
            return bad, None
        ok = 400 <= response.status_code < 500 if bad else response.status_code == 200
        return bad, (time.perf_counter() - start) * 1000 if ok else None

    for i in range(min(4, n_requests)):  # warm-up: first forward passes allocate
        one(i * (hostile or 1))
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n_requests)))
    wall = time.perf_counter() - start
    ok = sorted(ms for bad, ms in results if not bad and ms is not None)
    if not ok:
        raise SystemExit("every request failed")
    return {"images_per_s": len(ok) / wall, "p50": statistics.median(ok),
            "p95": ok[min(len(ok) - 1, round(0.95 * (len(ok) - 1)))],
            "failed": sum(1 for bad, ms in results if not bad and ms is None),
            "bad_not_4xx": sum(1 for bad, ms in results if bad and ms is None)}


def peaks(pgid: int) -> tuple[float, float]:
    """(inference workers, every other process of the server): the sum of their peak RSS in MB. The HTTP process and
    the manager are forked from the main one and share pages with it, so the second is an upper bound."""
    workers = set(worker_pids(pgid))
    pids = group_processes(pgid)
    worker = sum(memory_mb(pid, "VmHWM") for pid in workers)
    rest = sum(memory_mb(pid, "VmHWM") for pid in pids if pid not in workers and "resource_tracker" not in pids[pid])
    return worker, rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of test images (searched recursively)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--batch-sizes", default="8,1", help="max_batch_size values to compare")
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--hostile", type=int, default=0, help="every Nth request a huge-picture PNG (0: none)")
    parser.add_argument("overrides", nargs="*", help="extra bcc-serve overrides, e.g. trainer.precision=32-true")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif"))[:64]
    if not paths:
        raise SystemExit(f"no images under {args.images}")
    images = [(p.name, p.read_bytes()) for p in paths]
    rows = []
    for size in (int(s) for s in args.batch_sizes.split(",")):
        overrides = [f"max_batch_size={size}", f"batch_timeout={args.batch_timeout}", *args.overrides]
        process, url = start_server(args.ckpt, Path(tempfile.mkdtemp(prefix="serve_load_")), *overrides)
        try:
            idle_worker = sum(memory_mb(pid) for pid in worker_pids(process.pid))
            stats = load(url, images, args.requests, args.concurrency, args.timeout, args.hostile)
            stats["idle_worker"] = idle_worker
            stats["peak_worker"], stats["peak_rest"] = peaks(process.pid)
        finally:
            stop_server(process)
        rows.append((size, stats))
    hostile = f", every {args.hostile}th a 9400x9400 or 1x88M PNG" if args.hostile else ""
    print(f"\n{args.requests} requests of 1 image{hostile}, concurrency {args.concurrency}, checkpoint {args.ckpt}\n")
    print("| max_batch_size | images/s | p50 latency (ms) | p95 latency (ms) | failed good | bad not 4xx "
          "| worker RSS idle (MB) | worker peak RSS (MB) | server peak RSS, other processes (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, s in rows:
        print(f"| {size} | {s['images_per_s']:.1f} | {s['p50']:.0f} | {s['p95']:.0f} | {s['failed']:.0f} "
              f"| {s['bad_not_4xx']:.0f} | {s['idle_worker']:.0f} | {s['peak_worker']:.0f} | {s['peak_rest']:.0f} |")


if __name__ == "__main__":
    main()
