"""Linear probes against fine-tuning on the demo data, timed in one process (so ratios hold on a shared machine).

    python benchmarks/probe_vs_finetune.py [--root demo_root] [--size 224] [--part embeddings|train|all]
                                           [--vit-epochs 3] [--out folder]

embeddings: embeddings/s of a frozen ViT-S/16 and DenseNet121 (random weights), computed and from the cache.
train: wall clock of the real tasks at --train-size px (default 128), each run from a fresh embedding cache and a
    decoded-image cache built before the clocks start:
    - linear probe on a randomly initialised ViT-S/16 (`experiment=[demo,linear_probe]`), embeddings computed;
    - the same probe again, embeddings from the cache;
    - fine-tuning that ViT-S/16 end to end (`experiment=demo model.name=vit_small_patch16_224`, --vit-epochs epochs);
    - the demo's own fine-tune (`experiment=demo`: MobileNetV2 from scratch, 10 epochs, early stopping).
    Every run also writes its report; the probe's few-shot curve is printed as a markdown table.
Random weights on synthetic images: the numbers measure the harness and the machine, not any model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import generate, is_demo_root
from bcc_lightning.models.backbones import resolve_preprocess
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.training.probe import embed_splits

VIT = "vit_small_patch16_224"


def embeddings_part(root: Path, size: int, cache: Path) -> None:
    for name in (VIT, "densenet121"):
        cfg = {"name": name, "pretrained": False, "img_size": size, "freeze_backbone": True}
        model = BCCClassifier(cfg, {"name": "adam", "lr": 1e-3}, preprocess=resolve_preprocess(cfg).to_dict())
        dm = BCCDataModule(root, model.preprocess, batch_size=32, num_workers=0, cache=str(cache / "img"))
        for split in ("train", "val", "test"):
            dm.dataset(split)  # decoded-image cache built outside the timing
        for label in ("first (computed)", "second (cache)"):
            start = time.perf_counter()
            emb = embed_splits(model, dm, cache / "emb", torch.device("cpu"))
            seconds = time.perf_counter() - start
            n = sum(e["n"] for e in emb.values())
            print(f"{name} @ {size}px, {label}: {n} images in {seconds:.2f} s = {n / seconds:.1f} img/s")


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from bcc_lightning.utils.config import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="train", overrides=overrides)


def _timed(folder: Path, run: Callable[[Any], Any], overrides: list[str]) -> tuple[float, dict[str, Any]]:
    """Wall clock of one task run in `folder` (its run directory), and the metrics.json it wrote."""
    cfg = _compose(overrides)
    folder.mkdir(parents=True)
    previous = Path.cwd()
    os.chdir(folder)
    try:
        start = time.perf_counter()
        run(cfg)
        seconds = time.perf_counter() - start
    finally:
        os.chdir(previous)
    return seconds, json.loads((folder / "metrics.json").read_text())


def _warm_image_cache(root: Path, names: list[str], size: int, cache: Path) -> None:
    for name in names:
        pre = resolve_preprocess({"name": name, "pretrained": False, "img_size": size})
        dm = BCCDataModule(root, pre, batch_size=32, num_workers=0, cache=str(cache))
        for split in ("train", "val", "test"):
            dm.dataset(split)


def few_shot_table(block: dict[str, Any]) -> str:
    lines = ["| images per class | images used (mean) | test accuracy, mean [min–max] | test AUROC, mean [min–max] |",
             "|---|---|---|---|"]
    for s in block["curve"]:
        a, u = s["accuracy"], s["auroc"]
        lines.append(f"| {s['n_per_class']}{' (all: capped)' if s['capped'] else ''} | {s['images_used_mean']:.0f} | "
                     f"{a['mean']:.3f} [{a['min']:.3f}–{a['max']:.3f}] | {u['mean']:.3f} [{u['min']:.3f}–"
                     f"{u['max']:.3f}] |")
    return "\n".join(lines)


def train_part(root: Path, size: int, vit_epochs: int, work: Path) -> None:
    from bcc_lightning.tasks import probe, train

    image_cache = work / "img"
    _warm_image_cache(root, [VIT, "mobilenetv2"], size, image_cache)
    common = [f"data.root={root.resolve()}", f"data.cache={image_cache}", f"model.img_size={size}", "logger=none",
              "model.pretrained=false"]
    probe_args = ["experiment=[demo,linear_probe]", *common, f"model.name={VIT}", f"probe.cache={work / 'emb'}"]
    runs = [
        ("probe ViT-S/16, embeddings computed", probe.run, probe_args),
        ("probe ViT-S/16, embeddings from cache", probe.run, probe_args),
        (f"fine-tune ViT-S/16, {vit_epochs} epochs", train.run,
         ["experiment=demo", *common, f"model.name={VIT}", f"trainer.max_epochs={vit_epochs}"]),
        ("fine-tune MobileNetV2 (experiment=demo)", train.run, ["experiment=demo", *common]),
    ]
    results = []
    for index, (label, run, overrides) in enumerate(runs):
        seconds, metrics = _timed(work / f"run{index}", run, overrides)
        results.append((label, seconds, metrics))
        print(f"{label}: {seconds:.1f} s")
    base = results[0][1]
    print("\n| run | wall clock | x probe (computed) | epochs | test accuracy | test AUROC |")
    print("|---|---|---|---|---|---|")
    for label, seconds, metrics in results:
        m = metrics["metrics"]
        print(f"| {label} | {seconds:.1f} s | {seconds / base:.2f} | {metrics.get('epochs_trained', '')} | "
              f"{m['accuracy']:.3f} | {m['auroc']:.3f} |")
    probe1, probe2 = results[0][2]["probe"], results[1][2]["probe"]
    embed1 = sum(e["seconds"] for e in probe1["embeddings"].values())
    embed2 = sum(e["seconds"] for e in probe2["embeddings"].values())
    fits = [r[2]["probe"]["fit_seconds"] - sum(e["seconds"] for e in r[2]["probe"]["embeddings"].values())
            for r in results[:2]]
    curve = results[0][2]["few_shot"]
    print(f"\nProbe embeddings: {embed1:.1f} s computed, {embed2:.2f} s from the cache; logistic fit (C on val) and "
          f"model build: {fits[0]:.1f} s / {fits[1]:.1f} s; few-shot curve: {curve['seconds']:.1f} s "
          f"({len(curve['curve'])} sizes x {curve['repeats']} draws)")
    print("\nFew-shot curve (first probe run):\n" + few_shot_table(results[0][2]["few_shot"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="demo_data", help="demo data root (generated when absent)")
    parser.add_argument("--size", type=int, default=224, help="image size of the embeddings part")
    parser.add_argument("--train-size", type=int, default=128, help="image size of the probe/fine-tune part")
    parser.add_argument("--part", choices=("embeddings", "train", "all"), default="all")
    parser.add_argument("--vit-epochs", type=int, default=3)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder, removed)")
    args = parser.parse_args()
    root = Path(args.root)
    if not is_demo_root(root):
        generate(root, n_per_class=240, size=128, seed=0)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="probe_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.part in ("embeddings", "all"):
            embeddings_part(root, args.size, work / "embeddings")
        if args.part in ("train", "all"):
            train_part(root, args.train_size, args.vit_epochs, work / "train")
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
