"""Evaluate a model on one split and write the full report (metrics, figures, Grad-CAM, predictions, report.md).

`eval.py` and `train.py` (on its best checkpoint) both call `evaluate`, so they write the same report.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcc_lightning.callbacks.history import read_history
from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import is_demo_root
from bcc_lightning.data.imageio import load_rgb
from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.data.layout import group_of_paths
from bcc_lightning.models.inference import predict_batches
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.reports.gradcam import save_overlays
from bcc_lightning.reports.metrics import choose_threshold, compute_metrics
from bcc_lightning.reports.plots import predictions_grid_figure, save_figure, training_curves_figure
from bcc_lightning.reports.predictions import prediction_rows, write_predictions
from bcc_lightning.reports.report import write_metric_files, write_metrics_json, write_report_md
from bcc_lightning.utils.config import log
from bcc_lightning.utils.device import pick_device
from bcc_lightning.utils.errors import UserError

THRESHOLD_METHODS = ("youden", "f1")


def _predict_split(model: BCCClassifier, datamodule: BCCDataModule, split: str, device: torch.device,
                   precision: Any, tta: bool) -> tuple[list[Path], np.ndarray, np.ndarray]:
    dataset = datamodule.dataset(split)
    loader = datamodule.loader(split)
    probs = predict_batches(model, (images for images, _ in loader), device, precision, tta)
    return [p for p, _ in dataset.samples], np.array(dataset.labels, dtype=np.int64), probs.numpy().astype(np.float64)


def parse_threshold(value: Any) -> float | str:
    if isinstance(value, str) and value.lower() in THRESHOLD_METHODS:
        return value.lower()
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise UserError(f"threshold must be a number in (0, 1) or one of {THRESHOLD_METHODS}; got {value!r}.") from None
    if not 0 < threshold < 1:
        raise UserError(f"threshold must lie strictly between 0 and 1; got {threshold}.")
    return threshold


def group_metrics(root: Path, paths: list[Path], labels: np.ndarray, probs: np.ndarray,
                  threshold: float) -> dict[str, Any] | None:
    """Patient/group-level metrics when the data root has prepare's manifest.csv: mean probability per group."""
    group_of = group_of_paths(root)
    if not group_of:
        return None
    members: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(paths):
        group = group_of.get(path.resolve().relative_to(root.resolve()).as_posix())
        if group is not None:
            members[group].append(index)
    if not members or all(len(v) == 1 for v in members.values()):
        return None  # one image per group: identical to the image-level numbers
    group_labels = np.array([round(labels[v].mean()) for v in members.values()])
    group_probs = np.array([probs[v].mean() for v in members.values()])
    return compute_metrics(group_labels, group_probs, threshold)


def _sample(labels: np.ndarray, wanted: int, rng: random.Random) -> list[int]:
    """Up to `wanted` indices, half from each class where possible."""
    per_class = [[i for i in range(len(labels)) if labels[i] == c] for c in (0, 1)]
    for items in per_class:
        rng.shuffle(items)
    half = max(1, wanted // 2)
    chosen = per_class[0][:half] + per_class[1][:half]
    rest = [i for items in per_class for i in items[half:]]
    chosen += rest[: max(0, wanted - len(chosen))]
    return sorted(chosen)


def _cam_items(paths: list[Path], labels: np.ndarray, probs: np.ndarray, threshold: float, per_group: int,
               rng: random.Random) -> list[dict[str, Any]]:
    items = []
    predicted = (probs >= threshold).astype(int)
    for true in (0, 1):
        for correct in (True, False):
            pool = [i for i in range(len(labels)) if labels[i] == true and (predicted[i] == true) == correct]
            rng.shuffle(pool)
            for rank, i in enumerate(sorted(pool[:per_group])):
                items.append({
                    "path": paths[i], "label": true, "predicted": int(predicted[i]), "prob": float(probs[i]),
                    "true_name": CLASS_NAMES[true], "pred_name": CLASS_NAMES[predicted[i]],
                    "name": f"{CLASS_NAMES[true]}_{'correct' if correct else 'wrong'}_{rank}_{paths[i].stem}",
                })
    return items


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate: the split, the operating point (a number, or a method applied on val), TTA, the report's
    options (conf/report), and the device/precision of inference."""

    split: str = "test"
    threshold: Any = 0.5
    tta: bool = False
    report: Mapping[str, Any] = field(default_factory=dict)
    accelerator: str = "auto"
    precision: Any = "auto"


def _operating_point(model: BCCClassifier, datamodule: BCCDataModule, settings: EvalSettings,
                     device: torch.device) -> tuple[float, str, dict[str, Any] | None]:
    """(threshold, how it was chosen, validation metrics at it) — a method is always fitted on val, never on test."""
    method = parse_threshold(settings.threshold)
    if not isinstance(method, str):
        return float(method), "fixed", None
    if settings.split == "val":
        raise UserError(f"threshold={method} is chosen on the validation split, so evaluate split=test (or give "
                        f"a number).")
    _, val_labels, val_probs = _predict_split(model, datamodule, "val", device, settings.precision, settings.tta)
    chosen = choose_threshold(val_labels, val_probs, method)
    return chosen, f"{method}, chosen on the validation split", compute_metrics(val_labels, val_probs, chosen)


def _training_curves(outdir: Path, ckpt_path: Path, checkpoint: dict[str, Any] | None,
                     figures: dict[str, Any]) -> str:
    history, source = read_history(ckpt_path, checkpoint)
    if not history:
        note = (f"Training curves: not available — no history.csv beside {ckpt_path.parent} and no history "
                f"inside the checkpoint (checkpoints from older versions lack it).")
        log.warning(note)
        return note
    figures["training_curves.png"] = fig = training_curves_figure(history, source)
    save_figure(fig, outdir / "training_curves.png", close=False)
    return f"Training curves from {source}."


def _prediction_grid(outdir: Path, paths: list[Path], labels: np.ndarray, probs: np.ndarray, threshold: float,
                     split: str, synthetic: bool, grid_size: int, rng: random.Random,
                     figures: dict[str, Any]) -> None:
    chosen = _sample(labels, grid_size, rng)
    fig = predictions_grid_figure([load_rgb(paths[i]) for i in chosen], [int(labels[i]) for i in chosen],
                                  [float(probs[i]) for i in chosen], threshold,
                                  f"Random {split} predictions (threshold {threshold:.2f}; red = wrong)"
                                  + (" — SYNTHETIC" if synthetic else ""))
    figures["predictions_grid.png"] = fig
    save_figure(fig, outdir / "predictions_grid.png", close=False)


def evaluate(model: BCCClassifier, datamodule: BCCDataModule, outdir: Path, settings: EvalSettings,
             ckpt_path: Path | None = None, checkpoint: dict[str, Any] | None = None,
             tensorboard: Any = None) -> dict[str, Any]:
    """Evaluate `model` on `settings.split` of `datamodule` (its root and fold) and write every report file into
    `outdir`; returns metrics.json's body. train.py passes its own data module (splits scanned, cache reused)."""
    device = pick_device(settings.accelerator)
    root, split = datamodule.root, settings.split
    data_info = model.hparams.get("data_info") or {}
    synthetic = bool(data_info.get("synthetic_data")) or is_demo_root(root)
    threshold, threshold_method, val_metrics = _operating_point(model, datamodule, settings, device)

    paths, labels, probs = _predict_split(model, datamodule, split, device, settings.precision, settings.tta)
    if len(labels) == 0:
        raise UserError(f"No images in {root}/{split}.")
    metrics, figures = write_metric_files(outdir, labels, probs, threshold, split, synthetic)
    resolved = root.resolve()
    write_predictions(outdir / "predictions.csv", prediction_rows(
        [p.resolve().relative_to(resolved).as_posix() for p in paths], probs.tolist(), threshold, labels.tolist()))

    ckpt_path = ckpt_path or outdir / "checkpoints" / "none.ckpt"
    curves_note = _training_curves(outdir, ckpt_path, checkpoint, figures)
    report = settings.report
    rng = random.Random(int(report.get("seed", 0)))
    if int(report.get("grid_size", 12)) > 0:
        _prediction_grid(outdir, paths, labels, probs, threshold, split, synthetic, int(report.get("grid_size", 12)),
                         rng, figures)
    cams: list[dict[str, Any]] = []
    per_group = int(report.get("cam_per_group", 2))
    if per_group > 0:
        cams = _cam_items(paths, labels, probs, threshold, per_group, rng)
        for item in cams:
            item["image"] = load_rgb(item["path"])
        save_overlays(model, cams, model.preprocess, outdir / "gradcam", model.backbone_arch,
                      report.get("cam_layer"), device)

    result = {
        "split": split, "data_root": str(resolved), "checkpoint": str(ckpt_path), "synthetic_data": synthetic,
        "model": model.hparams.model["name"], "img_size": model.preprocess.img_size, "tta": bool(settings.tta),
        "fold": datamodule.fold, "threshold_method": threshold_method, "metrics": metrics,
        "val_metrics": val_metrics, "group_metrics": group_metrics(root, paths, labels, probs, threshold),
    }
    write_metrics_json(outdir, result)
    extra = [name for name in ("training_curves.png", "predictions_grid.png") if name in figures]
    write_report_md(outdir, result, extra, cams, curves_note)
    if tensorboard is not None:
        _to_tensorboard(tensorboard, split, metrics, figures)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return result


def _to_tensorboard(writer: Any, split: str, metrics: dict[str, Any], figures: dict[str, Any]) -> None:
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auroc", "auprc",
                "brier", "ece"):
        if metrics.get(key) is not None:
            writer.add_scalar(f"{split}_report/{key}", metrics[key], 0)
    for name, fig in figures.items():
        writer.add_figure(f"{split}_report/{Path(name).stem}", fig, 0, close=False)
    writer.flush()


def predict_split_csv(model: BCCClassifier, datamodule: BCCDataModule, split: str, out: Path,
                      accelerator: str = "auto", precision: Any = "auto") -> Path:
    """predictions.csv of one split (the validation fold of cross-validation runs: used for model selection)."""
    paths, labels, probs = _predict_split(model, datamodule, split, pick_device(accelerator), precision, False)
    resolved = datamodule.root.resolve()
    return write_predictions(out, prediction_rows([p.resolve().relative_to(resolved).as_posix() for p in paths],
                                                  probs.tolist(), 0.5, labels.tolist()))
