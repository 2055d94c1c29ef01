"""Load test for bcc-serve: a fixed number of single-image requests at concurrency N, with dynamic batching and with
batch size 1; prints images/s and p50/p95 latency as a Markdown table.

    python benchmarks/serve_load.py --ckpt /tmp/serve_ckpt/checkpoints/last.ckpt --images demo_data/test

Each configuration starts its own server on a free localhost port (its own process group, always shut down).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bcc_lightning.serving.process import running_server


def load(url: str, images: list[tuple[str, bytes]], n_requests: int, concurrency: int,
         timeout: float) -> dict[str, float]:
    """n_requests POSTs of one image each, `concurrency` at a time; latencies in ms, failures counted."""

    def one(i: int) -> float | None:
        name, data = images[i % len(images)]
        start = time.perf_counter()
        try:
            response = requests.post(f"{url}/predict", files=[("file", (name, data, "image/png"))], timeout=timeout)
        except requests.RequestException:
            return None
        return (time.perf_counter() - start) * 1000 if response.status_code == 200 else None

    for i in range(min(4, n_requests)):  # warm-up: first forward passes allocate
        one(i)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n_requests)))
    wall = time.perf_counter() - start
    ok = sorted(r for r in results if r is not None)
    if not ok:
        raise SystemExit("every request failed")
    return {"images_per_s": len(ok) / wall, "p50": statistics.median(ok),
            "p95": ok[min(len(ok) - 1, round(0.95 * (len(ok) - 1)))], "failed": len(results) - len(ok)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of test images (searched recursively)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--batch-sizes", default="8,1", help="max_batch_size values to compare")
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("overrides", nargs="*", help="extra bcc-serve overrides, e.g. trainer.precision=32-true")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif"))[:64]
    if not paths:
        raise SystemExit(f"no images under {args.images}")
    images = [(p.name, p.read_bytes()) for p in paths]
    rows = []
    for size in (int(s) for s in args.batch_sizes.split(",")):
        overrides = [f"max_batch_size={size}", f"batch_timeout={args.batch_timeout}", *args.overrides]
        with running_server(args.ckpt, Path(tempfile.mkdtemp(prefix="serve_load_")), *overrides) as url:
            stats = load(url, images, args.requests, args.concurrency, args.timeout)
        rows.append((size, stats))
    print(f"\n{args.requests} requests of 1 image, concurrency {args.concurrency}, checkpoint {args.ckpt}\n")
    print("| max_batch_size | images/s | p50 latency (ms) | p95 latency (ms) | failed |")
    print("|---|---|---|---|---|")
    for size, s in rows:
        print(f"| {size} | {s['images_per_s']:.1f} | {s['p50']:.0f} | {s['p95']:.0f} | {s['failed']:.0f} |")


if __name__ == "__main__":
    main()
