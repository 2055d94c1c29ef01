"""Embeddings/s of a frozen backbone (random weights) with and without the embedding cache, on the demo data.

    python benchmarks/probe_vs_finetune.py [demo_root] [img_size]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import generate, is_demo_root
from bcc_lightning.models.backbones import resolve_preprocess
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.tasks.probe import embed_splits


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "demo_data")
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    if not is_demo_root(root):
        generate(root, n_per_class=240, size=128, seed=0)
    cache = Path(tempfile.mkdtemp(prefix="emb_bench_"))
    try:
        for name in ("vit_small_patch16_224", "densenet121"):
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
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
