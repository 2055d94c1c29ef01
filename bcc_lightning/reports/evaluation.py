"""Evaluate a model on one split and write the full report (metrics, figures, Grad-CAM, predictions, report.md).

`eval.py` and `train.py` (on its best checkpoint) both call `evaluate`, so they write the same report.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from bcc_lightning.data.preprocess import apply_stain_norm, decode_resized
from bcc_lightning.data.stain import hed_jitter
from bcc_lightning.models.backbones import initialisation_text
from bcc_lightning.models.inference import predict_batches, predict_view_logits, view_probabilities
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.reports.gradcam import save_overlays
from bcc_lightning.reports.metrics import METRICS, compute_metrics, expected_calibration_error, metric_keys
from bcc_lightning.reports.operating_point import (
    choose_threshold,
    fit_temperature,
    parse_operating_point,
    view_logit,
)
from bcc_lightning.reports.plots import (
    predictions_grid_figure,
    referral_figure,
    reliability_before_after_figure,
    save_figure,
    stain_stress_figure,
    training_curves_figure,
)
from bcc_lightning.reports.predictions import prediction_rows, write_predictions
from bcc_lightning.reports.report import referral_curve, write_metric_files, write_metrics_json, write_report_md
from bcc_lightning.utils.config import log
from bcc_lightning.utils.device import pick_device
from bcc_lightning.utils.errors import UserError

GROUP_RULES = ("any", "mean", "majority")
CALIBRATIONS = ("temperature",)


@dataclass
class Scored:
    """One split's images, true labels and logits, one column per TTA view (1 without TTA)."""

    paths: list[Path]
    labels: np.ndarray
    logits: torch.Tensor  # (N, V) float32

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """Malignant probabilities: mean over the views of sigmoid(logit / T) (as predict computes them)."""
        return view_probabilities(self.logits, temperature)[0].numpy().astype(np.float64)

    def scores(self, temperature: float = 1.0) -> np.ndarray:
        """The logit of probs(T), float64, which does not saturate: what AUROC and AUPRC rank."""
        return view_logit(self.logits.double().numpy(), temperature)

    def spread(self, temperature: float = 1.0) -> np.ndarray | None:
        """Standard deviation of the views' probabilities (None without TTA)."""
        spread = view_probabilities(self.logits, temperature)[1]
        return None if spread is None else spread.numpy().astype(np.float64)


def predict_split(model: BCCClassifier, datamodule: BCCDataModule, split: str, device: torch.device,
                  precision: Any, tta: bool, fast: Any = "auto") -> Scored:
    """One split's paths, labels and per-view logits from the model (never augmented); compare uses it too."""
    dataset = datamodule.dataset(split)
    loader = datamodule.loader(split)
    logits = predict_view_logits(model, (images for images, _ in loader), device, precision, tta, fast=fast,
                                 n_images=len(dataset))
    paths = [p for p, _ in dataset.samples]
    bad = [str(paths[i]) for i in np.flatnonzero(~torch.isfinite(logits).all(dim=1).numpy())]
    if bad:
        raise UserError(f"The model gave NaN or infinite probabilities for {len(bad)} {split} image(s), e.g. "
                        f"{', '.join(bad[:10])}. The checkpoint's weights are probably broken (a diverged run); "
                        f"evaluate an earlier checkpoint, or retrain with a lower learning rate or precision=32.")
    return Scored(paths, np.array(dataset.labels, dtype=np.int64), logits)


def parse_threshold(value: Any) -> float | str:
    """The eval `threshold=` value: a number in [0, 1], or a method chosen on val (youden, f1, sensitivity@X,
    specificity@X)."""
    try:
        return parse_operating_point(value)
    except ValueError as exc:
        raise UserError(f"threshold={value!r} is not valid: {exc}. Pass e.g. threshold=0.5 or "
                        f"threshold=sensitivity@0.95.") from None


def manifest_groups(root: Path, paths: list[Path]) -> list[str] | None:
    """Each image's group (patient) from manifest.csv, or None unless every image has one."""
    group_of = group_of_paths(root)
    if not group_of:
        return None
    resolved = root.resolve()
    groups = [group_of.get(path.resolve().relative_to(resolved).as_posix()) for path in paths]
    return None if any(g is None for g in groups) else groups


def group_scores(groups: list[str], labels: np.ndarray, probs: np.ndarray, rule: str,
                 image_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(group labels, group scores) under `rule`, labels and scores by the same rule.

    any: malignant if any image is; score = max probability. mean: score = mean probability, label = mean label
    >= 0.5. majority: score = fraction of images called malignant at `image_threshold`, label = fraction of
    malignant images >= 0.5.
    """
    if rule not in GROUP_RULES:
        raise UserError(f"group_rule must be one of {', '.join(GROUP_RULES)} (got {rule!r}): 'any' calls a patient "
                        f"malignant if any image is, 'mean' averages the probabilities, 'majority' counts images.")
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    idx = list(members.values())
    if rule == "any":
        return np.array([labels[v].max() for v in idx]), np.array([probs[v].max() for v in idx])
    group_labels = np.array([int(labels[v].mean() >= 0.5) for v in idx])
    if rule == "mean":
        return group_labels, np.array([probs[v].mean() for v in idx])
    return group_labels, np.array([(probs[v] >= image_threshold).mean() for v in idx])


def group_metrics(root: Path, paths: list[Path], labels: np.ndarray, probs: np.ndarray, threshold: float,
                  rule: str = "any", group_threshold: float | None = None) -> dict[str, Any] | None:
    """Patient/group-level metrics when the data root has prepare's manifest.csv (see `group_scores`).

    group_threshold: on the group scores; default the image threshold (any, mean) or 0.5 (majority).
    """
    groups = manifest_groups(root, paths)
    if groups is None or len(set(groups)) == len(groups):
        return None  # no groups, or one image per group: identical to the image-level numbers
    group_labels, scores = group_scores(groups, labels, probs, rule, threshold)
    if group_threshold is None:
        group_threshold = 0.5 if rule == "majority" else threshold
    return {**compute_metrics(group_labels, scores, group_threshold), "rule": rule}


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
    group_rule: str = "any"
    report: Mapping[str, Any] = field(default_factory=dict)
    accelerator: str = "auto"
    precision: Any = "auto"
    calibrate: str | None = None  # "temperature": fit T on the val logits before choosing the threshold
    fast: Any = "auto"  # the inference fast path: True, False or "auto" (models.inference.want_fast)


@dataclass
class _OperatingPoint:
    threshold: float
    method: str  # how it reads in the report
    info: dict[str, Any]  # metrics.json's 'operating_point'
    val_metrics: dict[str, Any] | None = None
    group_threshold: float | None = None
    temperature: float = 1.0


def parse_calibrate(value: Any) -> str | None:
    """The eval `calibrate=` value: null/none/false (off) or temperature."""
    if value is None or value is False or str(value).strip().lower() in ("", "none", "null", "off", "false"):
        return None
    text = str(value).strip().lower()
    if text not in CALIBRATIONS:
        raise UserError(f"calibrate={value!r} is not valid: pass calibrate=temperature (fit one temperature T on "
                        f"the validation logits, so that sigmoid(logit / T) is calibrated) or calibrate=null.")
    return text


def _fit_temperature(labels: np.ndarray, logits: torch.Tensor) -> float:
    try:
        return fit_temperature(labels, logits.numpy())
    except ValueError as exc:
        raise UserError(f"calibrate=temperature fits T on the validation split, but {exc}. Evaluate a data root "
                        f"whose val split has both classes, or pass calibrate=null.") from None


def _fit_on_val(labels: np.ndarray, probs: np.ndarray, method: str, what: str) -> Any:
    try:
        return choose_threshold(labels, probs, method)
    except ValueError as exc:
        raise UserError(f"threshold={method} is chosen on the validation {what}, but {exc}. Give a number "
                        f"instead (e.g. threshold=0.5), or evaluate a data root whose val split has both "
                        f"classes.") from None


def operating_point_on_val(model: BCCClassifier, datamodule: BCCDataModule, settings: EvalSettings,
                           device: torch.device) -> _OperatingPoint:
    """The threshold and how it was chosen: a method is always fitted on val, never on the evaluated split.

    With calibrate=temperature, T is fitted on the val logits first and the threshold is chosen on the calibrated
    val probabilities (operating_point.fit_operating_point's order); T is stored with the threshold."""
    method = parse_threshold(settings.threshold)
    calibrate = parse_calibrate(settings.calibrate)
    if settings.split == "val" and (calibrate or not isinstance(method, float)):
        what = "calibrate=temperature fits T" if calibrate else f"threshold={method} is chosen"
        raise UserError(f"{what} on the validation split, so evaluate split=test (or give a number"
                        f"{' and calibrate=null' if calibrate else ''}).")
    if isinstance(method, float) and not calibrate:
        return _OperatingPoint(method, "fixed", {"threshold": method, "method": "fixed", "chosen_on": None})
    val = predict_split(model, datamodule, "val", device, settings.precision, settings.tta, settings.fast)
    paths, val_labels = val.paths, val.labels
    temperature = _fit_temperature(val_labels, val.logits) if calibrate else 1.0
    val_probs = val.probs(temperature)
    if isinstance(method, float):
        info: dict[str, Any] = {"threshold": method, "method": "fixed", "chosen_on": None}
        point = _OperatingPoint(method, "fixed", info, compute_metrics(val_labels, val_probs, method))
    else:
        chosen = _fit_on_val(val_labels, val_probs, method, "images")
        info = {"threshold": chosen.threshold, "method": method, "chosen_on": "val", "criterion": chosen.criterion,
                "value_on_val": chosen.value, "val_sensitivity": chosen.sensitivity,
                "val_specificity": chosen.specificity, "n_val": chosen.n,
                **({"note": chosen.note} if chosen.note else {})}
        point = _OperatingPoint(chosen.threshold, f"{method}, chosen on the validation split", info,
                                compute_metrics(val_labels, val_probs, chosen.threshold))
    if calibrate:
        point.temperature = temperature
        # ECE: positive (malignant) class, 10 equal-width bins, as compute_metrics reports it.
        info.update(temperature=temperature, calibration="temperature scaling, T fitted on the val logits (NLL)",
                    val_ece_before=expected_calibration_error(val_labels, val.probs(1.0)),
                    val_ece_after=expected_calibration_error(val_labels, val_probs))
        point.method += f"; temperature T = {temperature:.3f} fitted on the validation split"
    if isinstance(method, float):
        return point
    groups = manifest_groups(datamodule.root, paths)
    if groups is not None and len(set(groups)) < len(groups):
        # The group rule turns image scores into group scores on another scale: choose its own threshold there.
        group_labels, scores = group_scores(groups, val_labels, val_probs, settings.group_rule, chosen.threshold)
        if 0 < group_labels.sum() < len(group_labels):
            group_choice = _fit_on_val(group_labels, scores, method, "groups")
            point.group_threshold = group_choice.threshold
            info["group_threshold"] = group_choice.threshold
        else:
            # Said, not silent: the group-level numbers then use the image threshold (0.5 for 'majority').
            only = "malignant" if group_labels.sum() else "benign"
            info["group_threshold_note"] = (
                f"threshold={method} could not be chosen at the group level: all {len(group_labels)} validation "
                f"groups are {only} under group_rule={settings.group_rule}, so the group metrics use the image "
                f"threshold{' (0.5 for majority)' if settings.group_rule == 'majority' else ''} instead.")
            log.warning(info["group_threshold_note"])
    return point


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
             tensorboard: Any = None, leakage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate `model` on `settings.split` of `datamodule` (its root and fold) and write every report file into
    `outdir`; returns metrics.json's body. train.py passes its own data module (splits scanned, cache reused).

    leakage: the leakage audit's counts (e.g. test_with_copy_in_train), shown as a banner in report.md."""
    device = pick_device(settings.accelerator)
    root, split = datamodule.root, settings.split
    data_info = model.hparams.get("data_info") or {}
    synthetic = bool(data_info.get("synthetic_data")) or is_demo_root(root)
    if settings.group_rule not in GROUP_RULES:
        raise UserError(f"group_rule must be one of {', '.join(GROUP_RULES)} (got {settings.group_rule!r}): 'any' "
                        f"calls a patient malignant if any image is, 'mean' averages the probabilities, "
                        f"'majority' counts images.")
    point = operating_point_on_val(model, datamodule, settings, device)
    threshold, temperature = point.threshold, point.temperature

    scored = predict_split(model, datamodule, split, device, settings.precision, settings.tta, settings.fast)
    paths, labels, probs, spread = scored.paths, scored.labels, scored.probs(temperature), scored.spread(temperature)
    if len(labels) == 0:
        raise UserError(f"No images in {root}/{split}.")
    groups = manifest_groups(root, paths)
    # Images of one patient are alike: resample whole patients, or the intervals come out too narrow.
    metrics, figures = write_metric_files(outdir, labels, probs, threshold, split, synthetic,
                                          groups if groups is not None and len(set(groups)) < len(groups) else None,
                                          scores=scored.scores(temperature))
    resolved = root.resolve()
    write_predictions(outdir / "predictions.csv", prediction_rows(
        [p.resolve().relative_to(resolved).as_posix() for p in paths], probs.tolist(), threshold, labels.tolist(),
        method=str(point.info["method"]), spreads=None if spread is None else spread.tolist()))
    calibration = None
    if "temperature" in point.info:
        before = scored.probs(1.0)
        calibration = {"temperature": temperature, "ece_definition": "positive (malignant) class, 10 equal-width bins",
                       "ece_before": expected_calibration_error(labels, before),
                       "ece_after": metrics["ece"], "val_ece_before": point.info["val_ece_before"],
                       "val_ece_after": point.info["val_ece_after"]}
        figures["calibration_before_after.png"] = fig = reliability_before_after_figure(
            labels, before, probs, temperature, f"Reliability diagram, {split} split, before/after temperature "
            f"scaling (T = {temperature:.3f})")
        save_figure(fig, outdir / "calibration_before_after.png", close=False)
    uncertainty = "TTA std (spread of the 8 views)" if spread is not None else "closeness to the threshold |p - t|"
    referral = {"uncertainty": uncertainty,
                "points": referral_curve(labels, probs, threshold,
                                         spread if spread is not None else -np.abs(probs - threshold))}
    figures["referral_curve.png"] = fig = referral_figure(referral["points"], uncertainty,
                                                          f"Referral curve, {split} split")
    save_figure(fig, outdir / "referral_curve.png", close=False)

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
        "initialisation": initialisation_text(model.hparams.get("initialisation")),
        "fold": datamodule.fold, "threshold_method": point.method, "operating_point": point.info,
        "metrics": metrics, "val_metrics": point.val_metrics, "calibration": calibration, "referral": referral,
        "group_metrics": group_metrics(root, paths, labels, probs, threshold, settings.group_rule,
                                       point.group_threshold),
    }
    if leakage is not None:
        result["leakage"] = leakage
    write_metrics_json(outdir, result)
    extra = [name for name in ("training_curves.png", "predictions_grid.png") if name in figures]
    # calibration_before_after.png and referral_curve.png have their own sections in report.md.
    write_report_md(outdir, result, extra, cams, curves_note)
    if tensorboard is not None:
        _to_tensorboard(tensorboard, split, metrics, figures)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return result


def _to_tensorboard(writer: Any, split: str, metrics: dict[str, Any], figures: dict[str, Any]) -> None:
    for key, spec in METRICS.items():
        if spec.report and metrics.get(key) is not None:
            writer.add_scalar(f"{split}_report/{key}", metrics[key], 0)
    for name, fig in figures.items():
        writer.add_figure(f"{split}_report/{Path(name).stem}", fig, 0, close=False)
    writer.flush()


def predict_split_csv(model: BCCClassifier, datamodule: BCCDataModule, split: str, out: Path,
                      accelerator: str = "auto", precision: Any = "auto") -> Path:
    """predictions.csv of one split (the validation fold of cross-validation runs: used for model selection)."""
    scored = predict_split(model, datamodule, split, pick_device(accelerator), precision, False)
    resolved = datamodule.root.resolve()
    return write_predictions(out, prediction_rows([p.resolve().relative_to(resolved).as_posix()
                                                   for p in scored.paths], scored.probs().tolist(), 0.5,
                                                  scored.labels.tolist(), method="fixed"))


STRESS_STRENGTHS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def stain_stress(model: BCCClassifier, datamodule: BCCDataModule, outdir: Path, settings: EvalSettings,
                 threshold: float, strengths: Sequence[float] = STRESS_STRENGTHS,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Re-score a split under increasing HED stain perturbation (the same draw per image at every strength, applied
    to the raw pixels before any stain normalisation, as another lab's stain would be); stain_stress.png plots AUROC
    and accuracy against the strength."""
    device = pick_device(settings.accelerator)
    raw = replace(model.preprocess, stain_norm=None)
    samples = datamodule.samples(settings.split)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    pixels = [decode_resized(path, raw) for path, _ in samples]
    rows = []
    for strength in strengths:
        def batches(strength: float = strength) -> Iterator[torch.Tensor]:
            for start in range(0, len(pixels), datamodule.batch_size):
                yield torch.stack([apply_stain_norm(hed_jitter(p, strength, torch.Generator().manual_seed(seed + i)),
                                                    model.preprocess)
                                   for i, p in enumerate(pixels[start:start + datamodule.batch_size], start)])
        # one session for every strength: the fast path's export is paid once for all of them
        probs = predict_batches(model, batches(), device, settings.precision, fast=settings.fast,
                                n_images=len(pixels) * len(strengths)).numpy().astype(np.float64)
        metrics = compute_metrics(labels, probs, threshold)
        rows.append({"strength": float(strength), **{key: metrics[key] for key in metric_keys("summary")}})
    save_figure(stain_stress_figure(rows), outdir / "stain_stress.png")
    return rows
