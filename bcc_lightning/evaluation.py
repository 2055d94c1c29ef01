"""`eval.py ckpt=...`: rebuild the model from its checkpoint, evaluate one split, write the full report.

`train.py` calls `evaluate` on its best checkpoint too, so a training run and `eval.py` write the same report.
"""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import is_demo_root
from bcc_lightning.data.imageio import load_rgb
from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.errors import UserError
from bcc_lightning.files import write_text
from bcc_lightning.history import read_history
from bcc_lightning.inference import pick_device, predict_batches
from bcc_lightning.models.module import BCCClassifier, load_checkpoint, read_checkpoint
from bcc_lightning.reports.gradcam import save_overlays
from bcc_lightning.reports.metrics import choose_threshold, compute_metrics
from bcc_lightning.reports.plots import predictions_grid_figure, save_figure, training_curves_figure
from bcc_lightning.reports.report import write_metric_files, write_metrics_json, write_report_md
from bcc_lightning.runtime import log, run_dir

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
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        return None
    with manifest.open(newline="", encoding="utf-8") as handle:
        group_of = {row["path"]: row["group"] for row in csv.DictReader(handle) if row.get("group")}
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


def evaluate(model: BCCClassifier, ckpt_path: Path, root: Path, outdir: Path, split: str = "test",
             threshold: Any = 0.5, tta: bool = False, report: Any = None, batch_size: int = 64,
             num_workers: Any = "auto", accelerator: str = "auto", precision: Any = "auto",
             tensorboard: Any = None, checkpoint: dict[str, Any] | None = None,
             fold: int | None = None, datamodule: BCCDataModule | None = None) -> dict[str, Any]:
    """Evaluate `model` on `root/split` and write every report file into `outdir`; returns metrics.json's body.

    `datamodule`: reuse one that already scanned (and cached) these splits, as train.py does.
    """
    report = report or {}
    method = parse_threshold(threshold)
    device = pick_device(accelerator)
    if datamodule is None:
        datamodule = BCCDataModule(root, model.preprocess, batch_size=batch_size, num_workers=num_workers, fold=fold,
                                   gpu=device.type == "cuda")
    datamodule.dataset(split)
    data_info = model.hparams.get("data_info") or {}
    synthetic = bool(data_info.get("synthetic_data")) or is_demo_root(root)

    val_metrics = None
    if isinstance(method, str):
        if split == "val":
            raise UserError(f"threshold={method} is chosen on the validation split, so evaluate split=test (or give "
                            f"a number).")
        _, val_labels, val_probs = _predict_split(model, datamodule, "val", device, precision, tta)
        chosen = choose_threshold(val_labels, val_probs, method)
        val_metrics = compute_metrics(val_labels, val_probs, chosen)
        threshold_value, threshold_method = chosen, f"{method}, chosen on the validation split"
    else:
        threshold_value, threshold_method = float(method), "fixed"

    paths, labels, probs = _predict_split(model, datamodule, split, device, precision, tta)
    if len(labels) == 0:
        raise UserError(f"No images in {root}/{split}.")
    metrics, figures = write_metric_files(outdir, labels, probs, threshold_value, split, synthetic)
    _write_predictions(outdir, root, paths, labels, probs, threshold_value)

    extra: list[str] = []
    history, source = read_history(ckpt_path, checkpoint)
    if history:
        fig = training_curves_figure(history, source)
        save_figure(fig, outdir / "training_curves.png", close=False)
        figures["training_curves.png"] = fig
        extra.append("training_curves.png")
        curves_note = f"Training curves from {source}."
    else:
        curves_note = (f"Training curves: not available — no history.csv beside {ckpt_path.parent} and no history "
                       f"inside the checkpoint (checkpoints from older versions lack it).")
        log.warning(curves_note)

    rng = random.Random(int(report.get("seed", 0)))
    grid_size = int(report.get("grid_size", 12))
    if grid_size > 0:
        chosen_idx = _sample(labels, grid_size, rng)
        fig = predictions_grid_figure([load_rgb(paths[i]) for i in chosen_idx], [int(labels[i]) for i in chosen_idx],
                                      [float(probs[i]) for i in chosen_idx], threshold_value,
                                      f"Random {split} predictions (threshold {threshold_value:.2f}; red = wrong)"
                                      + (" — SYNTHETIC" if synthetic else ""))
        save_figure(fig, outdir / "predictions_grid.png", close=False)
        figures["predictions_grid.png"] = fig
        extra.append("predictions_grid.png")

    cams: list[dict[str, Any]] = []
    per_group = int(report.get("cam_per_group", 2))
    if per_group > 0:
        cams = _cam_items(paths, labels, probs, threshold_value, per_group, rng)
        for item in cams:
            item["image"] = load_rgb(item["path"])
        save_overlays(model, cams, model.preprocess, outdir / "gradcam", model.backbone_arch,
                      report.get("cam_layer"), device)

    result = {
        "split": split, "data_root": str(root.resolve()), "checkpoint": str(ckpt_path), "synthetic_data": synthetic,
        "model": model.hparams.model["name"], "img_size": model.preprocess.img_size, "tta": bool(tta),
        "fold": fold,
        "threshold_method": threshold_method, "metrics": metrics,
        "val_metrics": val_metrics, "group_metrics": group_metrics(root, paths, labels, probs, threshold_value),
    }
    write_metrics_json(outdir, result)
    write_report_md(outdir, result, extra, cams, curves_note)
    if tensorboard is not None:
        _to_tensorboard(tensorboard, split, metrics, figures)
    for fig in figures.values():
        import matplotlib.pyplot as plt

        plt.close(fig)
    return result


def _write_predictions(outdir: Path, root: Path, paths: list[Path], labels: np.ndarray, probs: np.ndarray,
                       threshold: float, name: str = "predictions.csv") -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "prob_malignant", "predicted"])
    resolved = root.resolve()
    for path, label, prob in zip(paths, labels, probs):
        rel = path.resolve().relative_to(resolved).as_posix()
        writer.writerow([rel, CLASS_NAMES[int(label)], f"{prob:.6f}", CLASS_NAMES[int(prob >= threshold)]])
    write_text(outdir / name, buffer.getvalue())


def _to_tensorboard(writer: Any, split: str, metrics: dict[str, Any], figures: dict[str, Any]) -> None:
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1", "auroc", "auprc",
                "brier", "ece"):
        if metrics.get(key) is not None:
            writer.add_scalar(f"{split}_report/{key}", metrics[key], 0)
    for name, fig in figures.items():
        writer.add_figure(f"{split}_report/{Path(name).stem}", fig, 0, close=False)
    writer.flush()


def _eval_fold(cfg: DictConfig, data_info: dict[str, Any]) -> int | None:
    """data.fold if given; else the checkpoint's own fold when its own data root is evaluated."""
    if cfg.data.get("fold") is not None:
        return int(cfg.data.fold)
    return data_info.get("fold") if not cfg.data.root else None


def predict_split_csv(model: BCCClassifier, datamodule: BCCDataModule, split: str, out: Path,
                      accelerator: str = "auto", precision: Any = "auto") -> Path:
    """predictions.csv of one split (used for the validation fold of cross-validation runs: out-of-fold data)."""
    root = datamodule.root
    paths, labels, probs = _predict_split(model, datamodule, split, pick_device(accelerator), precision, False)
    _write_predictions(out.parent, root, paths, labels, probs, 0.5, out.name)
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise UserError("Pass the checkpoint to evaluate: `python eval.py ckpt=outputs/train/<run>/checkpoints/"
                        "last.ckpt` (train.py prints the best checkpoint's path at the end).")
    if cfg.split not in ("train", "val", "test"):
        raise UserError(f"split must be train, val or test (got {cfg.split!r}).")
    outdir = run_dir()
    ckpt = Path(cfg.ckpt).expanduser().resolve()
    checkpoint = read_checkpoint(ckpt)
    model = load_checkpoint(ckpt, checkpoint)
    data_info = model.hparams.get("data_info") or {}
    root_value = cfg.data.root or data_info.get("root")
    if not root_value:
        raise UserError(f"The checkpoint {ckpt} does not say which data it was trained on; pass data.root=ROOT.")
    root = Path(root_value).expanduser()
    writer = None
    if "tensorboard" in (cfg.get("logger") or {}):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(outdir / "tensorboard"))
    try:
        result = evaluate(model, ckpt, root, outdir, split=cfg.split, threshold=cfg.threshold, tta=bool(cfg.tta),
                          report=cfg.report, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                          accelerator=str(cfg.trainer.accelerator), precision=cfg.trainer.precision,
                          tensorboard=writer, checkpoint=checkpoint, fold=_eval_fold(cfg, data_info))
    finally:
        if writer is not None:
            writer.close()
    print((outdir / "classification_report.txt").read_text())
    print(f"Report written to {outdir}/report.md (metrics.json, figures, gradcam/)")
    return result
