"""Decoders for the loader: PIL full decode + PIL resize (checkpoints made before the resize was recorded), PIL decode +
torchvision's uint8 tensor resize (what other formats get now), PIL JPEG draft mode (decode at 1/2, 1/4 or 1/8 scale)
+ resize, and torchvision.io.decode_jpeg + tensor resize (what JPEGs get now: data/imageio.load_pixels). Images/s on
microscope-sized JPEGs and how
far each one's pixels are from the full decode.

    python benchmarks/decode.py [--images 200] [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from bcc_lightning.data.demo import render_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    torch.set_num_threads(1)  # one loader worker's view: workers run single-threaded
    blobs = []
    for i in range(options.images):
        image = render_image(bool(i % 2), 700, np.random.default_rng(i)).resize((700, 460), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    size = options.size
    resize = v2.Resize((size, size), antialias=True)

    def full(data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as im:
            return v2.functional.pil_to_tensor(resize(im.convert("RGB")))

    def pil_tensor_resize(data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as im:
            return resize(v2.functional.pil_to_tensor(im.convert("RGB")))

    def draft(data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size, size))  # the smallest 1/2^k scale still at least `size` on both sides
            return v2.functional.pil_to_tensor(resize(im.convert("RGB")))

    def tv_io(data: bytes) -> torch.Tensor:
        decoded = torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return v2.functional.resize(decoded, [size, size], antialias=True)

    decoders: dict[str, Callable[[bytes], torch.Tensor]] = {
        "PIL full decode + PIL resize (resize=pil)": full,
        "PIL full decode + tensor resize (non-JPEG files)": pil_tensor_resize,
        "PIL draft mode + PIL resize": draft,
        "torchvision.io.decode_jpeg + tensor resize (JPEGs, the default)": tv_io}
    reference = [full(b).int() for b in blobs]
    rows = []
    for name, decode in decoders.items():
        rates = []
        for _ in range(options.repeats):
            start = time.perf_counter()
            outputs = [decode(b) for b in blobs]
            rates.append(len(blobs) / (time.perf_counter() - start))
        diff = np.mean([float((o.int() - r).abs().float().mean()) for o, r in zip(outputs, reference)])
        worst = max(int((o.int() - r).abs().max()) for o, r in zip(outputs, reference))
        rows.append((name, statistics.median(rates), diff, worst))
    print(f"{options.images} JPEGs 700x460 (q 90) -> {size}x{size}, one thread")
    print("| decoder | img/s | mean abs pixel diff vs full | max |\n|---|---|---|---|")
    for name, rate, diff, worst in rows:
        print(f"| {name} | {rate:.0f} | {diff:.3f} | {worst} |")


if __name__ == "__main__":
    main()
