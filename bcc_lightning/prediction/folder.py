"""Score a file or a folder of images with a checkpoint: one row per file in evaluation's predictions.csv schema
(true_label empty), an error cell for a file that is not a readable image, and Grad-CAM overlays on request.

The operating point (threshold, temperature, TTA views) is resolved as everywhere else (reports.operating_point,
models.checkpoint.resolve_tta); the scores come from models.inference, the rows from reports.predictions.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from bcc_lightning.data.imageio import ImageDecodeError, load_rgb
from bcc_lightning.data.layout import candidate_files, describe_skipped, is_image_file
from bcc_lightning.data.preprocess import Preprocess, read_pixels
from bcc_lightning.models.checkpoint import load_checkpoint, point_label, read_checkpoint, resolve_tta
from bcc_lightning.models.inference import predict_view_logits, view_probabilities
from bcc_lightning.reports.gradcam import save_overlays
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.reports.predictions import prediction_rows, write_predictions
from bcc_lightning.utils.device import pick_device, resolve_num_workers
from bcc_lightning.utils.errors import UserError


def find_images(target: Path, skipped: list[Path] | None = None) -> list[Path]:
    """`target` itself when it is a file; else every file under it that may be an image (layout.candidate_files),
    sorted; the files passed over as plainly not images go to `skipped`."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise UserError(f"input={target} does not exist. Pass an image file or a folder of images.")
    # Every candidate gets a row, so that none is dropped without a word: one that is not an image gets an error
    # cell; notes, tables and hidden files are only counted (layout.candidate_files).
    candidates, passed_over = candidate_files(target)
    files = sorted(p for p in candidates if p.is_file())
    if not any(is_image_file(p) for p in files):
        raise UserError(f"No images (.jpg/.jpeg/.png/.tif/.tiff/.bmp) under {target}.")
    if skipped is not None:
        skipped.extend(passed_over)
    return files


class ImageFiles(Dataset):
    """Decodes in the loader workers into the same uint8 pixels as evaluation's loader; a file that is not an image,
    cannot be read or fails to resize yields a placeholder and its reason instead of failing the run."""

    def __init__(self, files: list[Path], pre: Preprocess) -> None:
        self.files, self.pre = files, pre

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path, size = self.files[index], self.pre.img_size
        blank = torch.zeros(3, size, size, dtype=torch.uint8)
        if not is_image_file(path):
            kind = path.suffix or "no extension"
            return blank, f"not an image file ({kind}; bcc-predict reads .jpg/.jpeg/.png/.tif/.tiff/.bmp)"
        try:
            return read_pixels(path, self.pre), ""
        except ImageDecodeError as exc:
            return blank, str(exc).split(": ", 1)[-1]
        except Exception as exc:  # one file's failure (a resize out of memory...) is its own row, not the run's end
            return blank, f"could not be processed ({type(exc).__name__}: {exc})"


def predict(ckpt: Path, target: Path, out: Path, threshold: Any = "auto", batch_size: int = 64,
            num_workers: Any = "auto", accelerator: str = "auto", precision: Any = "auto", tta: Any = "auto",
            cam: bool = False, cam_dir: Path | None = None, cam_layer: str | None = None,
            progress: bool = False, point: dict[str, Any] | None = None, fast: Any = "auto",
            log: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Write `out` (CSV) with one row per file of `target` (find_images); returns the rows.

    threshold: a number, an evaluation's metrics.json or auto (see resolve_operating_point); `point` (already
    resolved) wins over it. Probabilities are sigmoid(logit / T) with the operating point's temperature T.
    tta: auto (the point's own views), true or false (models.checkpoint.resolve_tta).
    fast: the inference fast path (ONNX Runtime on a CPU), true, false or auto (models.inference.want_fast).
    cam: a Grad-CAM overlay per readable image (of its predicted class) into `cam_dir` (default: cams/ beside out),
    at `cam_layer` (None: the backbone's default layer). `log` gets the line about skipped non-image files."""
    skipped: list[Path] = []
    files = find_images(target, skipped)
    if skipped:
        log(describe_skipped([p.relative_to(target).as_posix() for p in skipped]))
    checkpoint = read_checkpoint(ckpt)
    if point is None:
        threshold, point = resolve_operating_point(threshold, ckpt, checkpoint)
    threshold = float(point["threshold"])
    if not 0 < threshold < 1:
        raise UserError(f"threshold must lie strictly between 0 and 1; got {threshold}.")
    temperature = float(point.get("temperature", 1.0))  # a point from an older version may lack it: no scaling
    tta = resolve_tta(tta, point)
    model = load_checkpoint(ckpt, checkpoint)
    device = pick_device(accelerator)
    gpu = device.type == "cuda"
    loader = DataLoader(ImageFiles(files, model.preprocess), batch_size=batch_size,
                        num_workers=resolve_num_workers(num_workers, gpu), pin_memory=gpu)
    errors: list[str] = []

    def batches() -> Iterator[torch.Tensor]:
        iterator: Any = loader
        if progress:
            from tqdm import tqdm

            iterator = tqdm(loader, desc="predict", unit="batch", file=sys.stderr)
        for images, reasons in iterator:
            errors.extend(reasons)
            yield images

    logits = predict_view_logits(model, batches(), device, precision, tta, fast=fast, n_images=len(files))
    probs, spread = view_probabilities(logits, temperature)
    rows = prediction_rows([str(path) for path in files], probs.tolist(), threshold, errors=errors,
                           method=point_label(point), spreads=None if spread is None else spread.tolist())
    write_predictions(out, rows)
    if cam:
        items = [{"path": Path(r["path"]), "predicted": int(r["prob_malignant"] >= threshold),
                  "name": f"{i:05d}_{Path(r['path']).stem}"} for i, r in enumerate(rows) if not r["error"]]
        for start in range(0, len(items), batch_size):
            for item in items[start:start + batch_size]:
                item["image"] = load_rgb(item["path"])  # decoded per batch: memory stays flat over large folders
            save_overlays(model, items[start:start + batch_size], model.preprocess, cam_dir or out.parent / "cams",
                          model.backbone_arch, cam_layer, device)
            for item in items[start:start + batch_size]:
                item.pop("image", None)
                item.pop("cam", None)
    return rows
