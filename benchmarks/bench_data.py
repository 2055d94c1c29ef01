"""Microscope-sized JPEGs (700x460) for bench runs on a many-core machine: `python benchmarks/bench_data.py ROOT
[--renders 16] [--copies 8]`. Renders `renders` x 8 synthetic images in parallel (the first 8 become val/), then
writes each training image `copies` times under other names: the loader decodes every file, and the decoded-image
cache keys on paths, so copies cost what distinct files cost."""

from __future__ import annotations

import argparse
import shutil
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

from bcc_lightning.data.demo import generate_raw


def render(args: tuple[Path, int]) -> Path:
    scratch, seed = args
    out = scratch / f"render{seed}"
    generate_raw(out, n_per_class=4, width=700, height=460, seed=seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--renders", type=int, default=16)
    parser.add_argument("--copies", type=int, default=8)
    options = parser.parse_args()
    scratch = options.root.parent / f".{options.root.name}_renders"
    with Pool(min(16, options.renders)) as pool:
        folders = pool.map(render, [(scratch, seed) for seed in range(options.renders)])
    for index, folder in enumerate(folders):
        split, copies = ("val", 1) if index == 0 else ("train", options.copies)
        for png in sorted(folder.rglob("*.png")):
            first = None
            for copy in range(copies):
                target = options.root / split / png.parent.name / f"{index}_{copy}_{png.stem}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                if first is None:
                    Image.open(png).convert("RGB").save(target, quality=90)
                    first = target
                else:  # the same bytes under another name: encoded once
                    shutil.copyfile(first, target)
    shutil.rmtree(scratch)
    print({split: len(list((options.root / split).rglob("*.jpg"))) for split in ("train", "val")})


if __name__ == "__main__":
    main()
