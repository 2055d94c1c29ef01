"""torch.compile (inductor) for the training step on this machine: compile time and steady-state images/s, next to
the eager step, per backbone. Decides whether `compile=auto` turns compilation on for a run of a given length.

    python benchmarks/compile.py [--models mobilenetv2 densenet121] [--batch 32] [--steps 6] [--out FILE.json]

The step is bench's model step (uint8 tensors in memory, the train.py optimizer, bf16 autocast where native,
channels-last): eager and compiled models take turns, so a slow spell of a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bcc_lightning.training.speed import bench_model, sync_device, train_step_fn
from bcc_lightning.utils.config import config_dir
from bcc_lightning.utils.device import pick_device, resolve_precision


def _timed(step: Callable[[Any], None], batch: Any, steps: int, device: torch.device) -> float:
    sync_device(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    sync_device(device)
    return batch[0].shape[0] * steps / (time.perf_counter() - start)


def measure(name: str, batch_size: int, steps: int, repeats: int, device: torch.device) -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("bench", [f"model={name}", f"data.batch_size={batch_size}"])
    precision = resolve_precision("auto", "gpu" if device.type == "cuda" else "cpu")
    eager, compiled = bench_model(cfg, True), bench_model(cfg, True)
    compiled.backbone = torch.compile(compiled.backbone)
    size = eager.preprocess.img_size
    batch = (torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device),
             torch.randint(0, 2, (batch_size,), device=device).float())
    eager_step, compiled_step = train_step_fn(eager, device, precision), train_step_fn(compiled, device, precision)
    eager_step(batch)
    sync_device(device)
    start = time.perf_counter()
    compiled_step(batch)  # the first call compiles the forward and the backward
    compiled_step(batch)
    sync_device(device)
    first_two = time.perf_counter() - start
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        rates["eager"].append(_timed(eager_step, batch, steps, device))
        rates["compiled"].append(_timed(compiled_step, batch, steps, device))
    eager_rate, compiled_rate = (statistics.median(rates[k]) for k in ("eager", "compiled"))
    compile_s = first_two - 2 * batch_size / compiled_rate
    saved_per_image = 1 / eager_rate - 1 / compiled_rate
    return {"model": name, "img_size": size, "batch_size": batch_size, "precision": str(precision),
            "device": str(device), "threads": torch.get_num_threads(), "compile_s": compile_s,
            "eager_img_s": eager_rate, "compiled_img_s": compiled_rate, "speedup": compiled_rate / eager_rate,
            "break_even_images": compile_s / saved_per_image if saved_per_image > 0 else None, "repeats": rates,
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenetv2", "densenet121"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    options = parser.parse_args()
    device = pick_device(options.device)
    rows = []
    for name in options.models:
        rows.append(measure(name, options.batch, options.steps, options.repeats, device))
        print(json.dumps(rows[-1]), flush=True)
    print("| model | compile (s) | eager img/s | compiled img/s | speed-up | break-even (images) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        even = f"{r['break_even_images']:,.0f}" if r["break_even_images"] else "never"
        print(f"| {r['model']} {r['img_size']} px, batch {r['batch_size']} | {r['compile_s']:.0f} | "
              f"{r['eager_img_s']:.1f} | {r['compiled_img_s']:.1f} | {r['speedup']:.2f}x | {even} |")
    if options.out:
        options.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
