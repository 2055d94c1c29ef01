"""Inference fast paths on this machine: eager (today's bf16 path and fp32), torch.compile (inductor, with and
without freezing) and ONNX Runtime, on random-weight models and random uint8 batches.

    python benchmarks/inference.py                       # MobileNetV2 and DenseNet121, 224 px, batch 32
    python benchmarks/inference.py --models mobilenetv2 --batches 4 --repeats 3
    python benchmarks/inference.py --e2e-images 200          # and bcc-predict on 200 JPEGs

Rows take turns (A B C A B C ...) within each repeat, so a slow spell of a shared machine hits them alike; the
table shows the median and min - max img/s, the one-off setup (compile, or export + session) separately, and each
path's largest probability difference from eager fp32 on the same images. --e2e-images N adds `bcc-predict` end to
end on N generated 700x460 JPEGs (decode in the loader workers, a fresh model and session per run, as a user's
predict pays them), with inference.fast false and true, and the loader alone. Writes JSON (default
docs/inference_cpu.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A fresh inductor cache: the compile time reported is what a user's first run pays, not a warm cache's few seconds.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bcc_inductor_"))

import torch  # noqa: E402

from bcc_lightning.models.inference import OnnxRunner, predict_view_logits  # noqa: E402
from bcc_lightning.models.module import BCCClassifier  # noqa: E402
from bcc_lightning.utils.device import autocast_for  # noqa: E402

ROWS = {
    "eager_bf16": "(a) eager, bf16 autocast, channels-last (today's path)",
    "eager_fp32": "(b) eager, fp32, channels-last",
    "compile": "(c) torch.compile (inductor), bf16 autocast",
    "compile_freezing": "(c') torch.compile, inductor freezing, bf16 autocast",
    "onnxruntime": "(d) ONNX Runtime, fp32, ORT_ENABLE_ALL",
}
PRECISION = {"eager_bf16": "bf16-mixed", "eager_fp32": "32-true", "compile": "bf16-mixed",
             "compile_freezing": "bf16-mixed", "onnxruntime": "32-true"}


class CompiledRunner:
    """torch.compile (inductor) of the model's forward for one fixed batch shape, under the caller's autocast.

    `freezing`: inductor treats the weights as constants and prepacks them for oneDNN (conv + BN folded, bf16
    weights cast once); patched in around each call rather than set for the process. Dynamo caches compiled code
    per code object and does not guard on inductor's config (nor, with inlined modules, on which module): each
    runner compiles its own copy of forward's code, or the second runner would silently reuse the first's graph."""

    def __init__(self, model: torch.nn.Module, freezing: bool) -> None:
        forward = type(model).forward
        fresh = types.FunctionType(forward.__code__.replace(), forward.__globals__, forward.__name__,
                                   forward.__defaults__, forward.__closure__)
        self.freezing = freezing
        self.compiled = torch.compile(types.MethodType(fresh, model), dynamic=False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        # one memory layout for every call: another stride would recompile
        images = images.contiguous(memory_format=torch.channels_last)
        with inductor_config.patch(freezing=self.freezing):
            return self.compiled(images)


def build_model(name: str, size: int) -> BCCClassifier:
    """Random weights, as bcc-bench builds its models (no download)."""
    torch.manual_seed(0)
    model = {"name": name, "pretrained": False, "weights": None, "img_size": size, "channels_last": True}
    return BCCClassifier(model, {"name": "adam", "lr": 1e-4}, load_weights=False).eval()


def make_runner(row: str, model: BCCClassifier, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if row.startswith("eager"):
        return model
    if row.startswith("compile"):
        return CompiledRunner(copy.deepcopy(model), freezing=row == "compile_freezing")
    return OnnxRunner(model, size)


def timed(fn: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor], precision: str) -> float:
    """Seconds for every batch through fn (CPU: no device synchronisation needed)."""
    start = time.perf_counter()
    with torch.no_grad(), autocast_for(torch.device("cpu"), precision):
        for images in batches:
            fn(images)
    return time.perf_counter() - start


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model = build_model(name, args.size)
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=generator)
               for _ in range(args.batches)]
    reference = torch.sigmoid(predict_view_logits(model, batches[:1], torch.device("cpu"), "32-true")[:, 0])
    runners: dict[str, Any] = {}
    result: dict[str, Any] = {}
    for row in args.rows:
        start = time.perf_counter()
        runners[row] = make_runner(row, model, args.size)
        with torch.no_grad(), autocast_for(torch.device("cpu"), PRECISION[row]):
            logits = runners[row](batches[0]).float()  # the first call compiles
        setup = time.perf_counter() - start
        steady_one = timed(runners[row], batches[:1], PRECISION[row])
        diff = float((torch.sigmoid(logits) - reference).abs().max())
        result[row] = {"label": ROWS[row], "setup_s": max(0.0, setup - steady_one), "max_abs_prob_diff": diff,
                       "img_s": []}
        print(f"{name} {row}: setup {result[row]['setup_s']:.1f} s, max |dp| {diff:.2e}", flush=True)
    for repeat in range(args.repeats):
        for row in args.rows:  # A B C A B C ...: the rows share the machine's slow and fast spells
            seconds = timed(runners[row], batches, PRECISION[row])
            result[row]["img_s"].append(args.batch * args.batches / seconds)
        print(f"{name} repeat {repeat + 1}: " + ", ".join(f"{r} {result[r]['img_s'][-1]:.1f}" for r in args.rows),
              flush=True)
    base = statistics.median(result["eager_bf16"]["img_s"]) if "eager_bf16" in result else None
    for row in args.rows:
        values = result[row]["img_s"]
        result[row]["median_img_s"] = statistics.median(values)
        # per-repeat ratios against today's path: the machine's speed moves, a ratio within a repeat does not
        if "eager_bf16" in result:
            ratios = [v / b for v, b in zip(values, result["eager_bf16"]["img_s"])]
            result[row]["vs_eager_bf16"] = statistics.median(ratios)
            result[row]["vs_eager_bf16_range"] = [min(ratios), max(ratios)]
        if base and result[row]["setup_s"] > 0 and row != "eager_bf16":
            # images after which the one-off setup is paid back by the faster steady state
            gain = 1 / base - 1 / result[row]["median_img_s"]
            result[row]["break_even_images"] = result[row]["setup_s"] / gain if gain > 0 else None
    return result


def bench_end_to_end(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """bcc-predict on a folder of JPEGs, eager against the fast path, alternating; and the loader alone."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from bcc_lightning.data.datamodule import ImageFolderDataset
    from bcc_lightning.data.demo import generate_raw
    from bcc_lightning.prediction.folder import find_images, predict
    from bcc_lightning.utils.device import resolve_num_workers

    work = Path(tempfile.mkdtemp(prefix="bcc_e2e_"))
    generate_raw(work / "images", n_per_class=max(1, args.e2e_images // 2), width=700, height=460, seed=3)
    for png in (work / "images").rglob("*.png"):  # microscope exports are mostly JPEG
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    model = build_model(name, args.size)
    ckpt = work / "model.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt)
    files = find_images(work / "images")
    workers = resolve_num_workers("auto", False)
    runs: dict[str, list[float]] = {"loader only": [], "predict, inference.fast=false": [],
                                    "predict, inference.fast=true": []}
    for repeat in range(args.repeats):
        for label in runs:
            start = time.perf_counter()
            if label == "loader only":
                # The one decoder and resize that predict's loader runs too (data.preprocess), without the model.
                dataset = ImageFolderDataset([(path, 0) for path in files], model.preprocess)
                for _ in DataLoader(dataset, batch_size=args.batch, num_workers=workers):
                    pass
            else:
                predict(ckpt, work / "images", work / "preds.csv", threshold=0.5, batch_size=args.batch,
                        num_workers="auto", accelerator="cpu", fast=label.endswith("true"))
            runs[label].append(len(files) / (time.perf_counter() - start))
        print(f"{name} end to end, repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()),
              flush=True)
    base = runs["predict, inference.fast=false"]
    return {label: {"img_s": v, "median_img_s": statistics.median(v),
                    "vs_fast_false": statistics.median([a / b for a, b in zip(v, base)])}
            for label, v in runs.items()} | {"images": len(files), "workers": workers}


def table(results: dict[str, dict[str, Any]], rows: list[str]) -> str:
    lines = ["| path | " + " | ".join(f"{m} img/s (min – max)" for m in results) + " | "
             + " | ".join(f"{m} vs (a)" for m in results) + " | " + " | ".join(f"{m} setup s" for m in results)
             + " | max abs prob diff vs fp32 |",
             "|---" * (1 + 3 * len(results) + 1) + "|"]
    for row in rows:
        cells = [ROWS[row]]
        for r in results.values():
            v = r[row]["img_s"]
            cells.append(f"{r[row]['median_img_s']:.1f} ({min(v):.1f} – {max(v):.1f})")
        for r in results.values():
            cells.append(f"{r[row].get('vs_eager_bf16', float('nan')):.2f}×")
        for r in results.values():
            cells.append("–" if row.startswith("eager") else f"{r[row]['setup_s']:.0f}")
        cells.append(" / ".join(f"{r[row]['max_abs_prob_diff']:.1e}" for r in results.values()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv2", "densenet121"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--e2e-images", type=int, default=0, help="also bcc-predict on this many JPEGs (0: no)")
    parser.add_argument("--e2e-model", default="mobilenetv2", help="the backbone of the end-to-end rows")
    parser.add_argument("--out", type=Path, default=Path("docs/inference_cpu.json"))
    args = parser.parse_args()
    results = {name: bench_model(name, args) for name in args.models}
    end_to_end = {args.e2e_model: bench_end_to_end(args.e2e_model, args)} if args.e2e_images else {}
    print()
    print(f"{args.size} px, batch {args.batch}, {args.batches} batches per run, median of {args.repeats} "
          f"(rows alternating), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(table(results, args.rows))
    for name, rows in end_to_end.items():
        print(f"\n{name}, end to end on {rows['images']} JPEGs (700x460), {rows['workers']} loader workers:\n"
              "| run | img/s (min – max) | vs fast=false |\n|---|---|---|")
        for label, row in rows.items():
            if isinstance(row, dict):
                print(f"| {label} | {row['median_img_s']:.1f} ({min(row['img_s']):.1f} – {max(row['img_s']):.1f}) "
                      f"| {row['vs_fast_false']:.2f}× |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {**vars(args), "out": str(args.out), "threads": torch.get_num_threads(),
                                                 "torch": torch.__version__, "cpu": platform.processor()},
                                    "results": results, "end_to_end": end_to_end}, indent=1) + "\n")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
