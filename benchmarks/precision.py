"""bf16 autocast against fp32 for the training step on this machine (eager, channels-last, uint8 tensors in memory,
train.py's optimizer), the two taking turns so a slow spell of a shared machine hits both alike.

    python benchmarks/precision.py mobilenetv2 densenet121 [--steps 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from hydra import compose, initialize_config_dir

from bcc_lightning.training.speed import bench_model, model_step_rate
from bcc_lightning.utils.config import config_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    print("| model | bf16-mixed img/s | 32-true img/s | fp32 / bf16 |\n|---|---|---|---|")
    for name in options.models:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose("bench", [f"model={name}", "warmup=1", f"steps={options.steps}"])
        models = {"bf16-mixed": bench_model(cfg, True), "32-true": bench_model(cfg, True)}
        rates: dict[str, list[float]] = {precision: [] for precision in models}
        for _ in range(options.repeats):
            for precision, model in models.items():
                images, seconds = model_step_rate(model, cfg, torch.device("cpu"), precision)
                rates[precision].append(images / seconds)
        bf16, fp32 = (statistics.median(rates[p]) for p in ("bf16-mixed", "32-true"))
        print(f"| {name} | {bf16:.1f} ({min(rates['bf16-mixed']):.1f}-{max(rates['bf16-mixed']):.1f}) | {fp32:.1f} "
              f"({min(rates['32-true']):.1f}-{max(rates['32-true']):.1f}) | {fp32 / bf16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
