"""`bcc-predict ckpt=PATH input=FILE_OR_DIR [out=preds.csv] [cam=true]` (also `python -m bcc_lightning.tasks.predict`):
classify new images; predictions.csv has the same schema as evaluation's (true_label empty).

threshold=auto (the default) applies the operating point the checkpoint carries (`bcc-eval ... save_to=model.ckpt`
writes it): its threshold, temperature and TTA views; a checkpoint without one stops with a message that says how to
get one. A number or an evaluation's metrics.json can be given instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from bcc_lightning.data.imageio import ImageDecodeError, load_rgb
from bcc_lightning.data.layout import is_image_file, walk_files
from bcc_lightning.data.preprocess import Preprocess, read_pixels
from bcc_lightning.models.checkpoint import load_checkpoint, point_label, read_checkpoint, resolve_tta
from bcc_lightning.models.inference import predict_view_logits, view_probabilities
from bcc_lightning.reports.gradcam import save_overlays
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.reports.predictions import prediction_rows, write_predictions
from bcc_lightning.utils.config import check_config, run_dir
from bcc_lightning.utils.device import pick_device, resolve_num_workers
from bcc_lightning.utils.errors import UserError


def find_images(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise UserError(f"input={target} does not exist. Pass an image file or a folder of images.")
    # Every file gets a row, so that none is dropped without a word: those that are not images get an error cell.
    files = sorted(p for p in walk_files(target) if p.is_file())
    if not any(is_image_file(p) for p in files):
        raise UserError(f"No images (.jpg/.jpeg/.png/.tif/.tiff/.bmp) under {target}.")
    return files


class _Files(Dataset):
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


threshold_label = point_label  # predictions.csv's threshold_method


def predict(ckpt: Path, target: Path, out: Path, threshold: Any = "auto", batch_size: int = 64,
            num_workers: Any = "auto", accelerator: str = "auto", precision: Any = "auto", tta: Any = "auto",
            cam: bool = False, cam_dir: Path | None = None, cam_layer: str | None = None,
            progress: bool = False, point: dict[str, Any] | None = None, fast: Any = "auto") -> list[dict[str, Any]]:
    """Write `out` (CSV) with one row per image; returns the rows.

    threshold: a number, an evaluation's metrics.json or auto (see resolve_operating_point); `point` (already
    resolved) wins over it. Probabilities are sigmoid(logit / T) with the operating point's temperature T.
    tta: auto (the point's own views), true or false (models.checkpoint.resolve_tta).
    fast: the inference fast path (ONNX Runtime on a CPU), true, false or auto (models.inference.want_fast)."""
    files = find_images(target)
    checkpoint = read_checkpoint(ckpt)
    if point is None:
        threshold, point = resolve_operating_point(threshold, ckpt, checkpoint)
    threshold = float(point["threshold"])
    if not 0 < threshold < 1:
        raise UserError(f"threshold must lie strictly between 0 and 1; got {threshold}.")
    temperature = float(point.get("temperature", 1.0))
    tta = resolve_tta(tta, point)
    model = load_checkpoint(ckpt, checkpoint)
    device = pick_device(accelerator)
    gpu = device.type == "cuda"
    loader = DataLoader(_Files(files, model.preprocess), batch_size=batch_size,
                        num_workers=resolve_num_workers(num_workers, gpu), pin_memory=gpu)
    errors: list[str] = []

    def batches() -> Any:
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
                           method=threshold_label(point), spreads=None if spread is None else spread.tolist())
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


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    if not cfg.get("ckpt") or not cfg.get("input"):
        raise UserError("Usage: bcc-predict ckpt=PATH input=FILE_OR_DIR [out=preds.csv] "
                        "[threshold=auto|0.5|PATH/metrics.json] [tta=auto|true|false] [cam=true]")
    out = Path(cfg.out) if cfg.get("out") else run_dir() / "predictions.csv"
    progress = sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress)
    check_config(cfg)
    ckpt = Path(cfg.ckpt).expanduser()
    threshold, point = resolve_operating_point(cfg.threshold, ckpt)
    tta = resolve_tta(cfg.tta, point)
    print(f"Threshold {threshold:.4f} ({threshold_label(point)}); {'TTA: 8 views' if tta else 'no TTA'}")
    rows = predict(ckpt, Path(cfg.input).expanduser(), out, threshold,
                   int(cfg.data.batch_size), cfg.data.num_workers, str(cfg.trainer.accelerator),
                   cfg.trainer.precision, tta,
                   bool(cfg.cam), Path(cfg.cam_dir) if cfg.get("cam_dir") else None, cfg.get("cam_layer"), progress,
                   point=point, fast=cfg.get("inference", {}).get("fast", "auto"))
    failed = sum(1 for r in rows if r["error"])
    malignant = sum(1 for r in rows if r["pred_label"] == "malignant")
    print(f"{len(rows)} images: {malignant} malignant, {len(rows) - malignant - failed} benign, {failed} unreadable "
          f"(see the error column) at threshold {threshold:.4f} ({threshold_label(point)}). Written to {out}")
    return rows


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import predict as _main

    _main()
