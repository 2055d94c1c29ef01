"""Write an evaluation's files from labels and probabilities (metrics, report text, figures, report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bcc_lightning.reports.metrics import METRICS, classification_report, compute_metrics, read_metrics
from bcc_lightning.reports.plots import (
    calibration_figure,
    confusion_matrix_figure,
    pr_figure,
    roc_figure,
    save_figure,
)
from bcc_lightning.reports.statistics import MIN_GROUPS, MIN_GROUPS_FEW, metric_intervals
from bcc_lightning.utils.atomic_io import write_json, write_text

SYNTHETIC_NOTE = "SYNTHETIC DEMO DATA: these numbers say nothing about real microscopy images."
FIGURES = ("confusion_matrix.png", "roc_curve.png", "pr_curve.png", "calibration.png")

N_RESAMPLES = 1000  # enough for 95 % endpoints to ~0.01 and fast on tens of thousands of images
REFERRAL_FRACTIONS = tuple(round(0.05 * k, 2) for k in range(11))  # refer 0 % .. 50 % of the images


def referral_curve(labels: Any, probs: Any, threshold: float, uncertainty: Any,
                   fractions: tuple[float, ...] = REFERRAL_FRACTIONS) -> list[dict[str, Any]]:
    """Accuracy and sensitivity of the images kept when the most uncertain fraction is referred to a pathologist.

    Higher `uncertainty` is referred first; ties keep the input order (a stable sort). Sensitivity is written under
    the registry's key `recall` (files written before carry `sensitivity`: read_metrics maps it), None when no
    malignant image is kept."""
    y = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(probs, dtype=np.float64) >= threshold
    order = np.argsort(-np.asarray(uncertainty, dtype=np.float64), kind="stable")
    points = []
    for fraction in fractions:
        kept = order[int(round(fraction * len(y))):]
        y_kept, pred_kept = y[kept], pred[kept]
        malignant = int(y_kept.sum())
        points.append({"referred_fraction": float(fraction), "kept": int(len(kept)),
                       "accuracy": float(np.mean(pred_kept == y_kept)) if len(kept) else None,
                       "recall": float(np.mean(pred_kept[y_kept == 1])) if malignant else None})
    return points


def metric_cis(labels: Any, probs: Any, threshold: float, groups: Any = None,
               scores: Any = None) -> dict[str, dict[str, Any]]:
    """95 % CI of each reported metric (statistics.metric_intervals: clustered over `groups`, e.g. patients, when
    given). {name: {low, high, method, n_groups, unreliable[, groups, reason, note]}}. scores: what AUROC ranks."""
    intervals = metric_intervals(labels, probs, threshold=threshold, groups=groups, n_resamples=N_RESAMPLES,
                                 scores=scores)
    out = {}
    for key, ci in intervals.items():
        named = groups is None or "group" in ci.method  # the clustered methods name their groups themselves
        method = ci.method + ("" if named else f", clustered by {len(set(groups))} groups")
        # n_groups: the groups behind this interval (its own class for class-conditional metrics); None = images.
        out[key] = {"low": ci.low, "high": ci.high, "method": method, "n_groups": ci.n_groups,
                    "unreliable": ci.unreliable, **({"groups": ci.details["groups"]} if "groups" in ci.details else {}),
                    **({"reason": ci.reason} if ci.reason else {}), **({"note": ci.note} if ci.note else {})}
    return out


def write_metric_files(outdir: str | Path, labels: Any, probs: Any, threshold: float, split: str,
                       synthetic: bool = False, groups: Any = None,
                       scores: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """classification_report.txt and the four metric figures; returns (metrics, {file name: figure}).

    metrics['intervals'] holds each metric's 95 % CI (clustered over `groups` when given). scores: the logits
    (operating_point.view_logit), which AUROC and AUPRC rank so that saturated probabilities do not tie. The figures
    are returned (already saved) so that callers can also send them to TensorBoard.
    """
    outdir = Path(outdir)
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    metrics = compute_metrics(labels, probs, threshold, scores=scores)
    metrics["intervals"] = metric_cis(labels, probs, threshold, groups, scores)
    header = f"{SYNTHETIC_NOTE}\n\n" if synthetic else ""
    write_text(outdir / "classification_report.txt",
               header + f"Split: {split}, threshold {threshold:.4f}\n"
               + classification_report(metrics, metrics["intervals"]))
    suffix = f", {split} split" + (" — SYNTHETIC DEMO DATA" if synthetic else "")
    figures = {
        "confusion_matrix.png": confusion_matrix_figure(
            metrics, f"Confusion matrix{suffix}\n(threshold {threshold:.2f}, n={metrics['n']})"),
        "roc_curve.png": roc_figure(labels, probs, metrics, f"ROC curve{suffix}"),
        "pr_curve.png": pr_figure(labels, probs, metrics, f"Precision-recall{suffix}"),
        "calibration.png": calibration_figure(labels, probs, metrics, f"Reliability diagram{suffix}"),
    }
    for name, fig in figures.items():
        save_figure(fig, outdir / name, close=False)
    return metrics, figures


def _fmt(value: Any, reason: str | None = None) -> str:
    if value is None:
        return f"n/a ({reason})" if reason else "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def unreliable_text(interval: dict[str, Any]) -> str:
    """' — unreliable: N group(s) ...' for an interval behind too few groups for its method to cover, else ''."""
    if not interval.get("unreliable") or interval.get("low") is None:
        return ""
    return (f" — **unreliable: {interval.get('n_groups')} group(s), too few for this method to cover 95 % "
            f"(percentile cluster bootstrap: {MIN_GROUPS}, Wilson with design effect and Obuchowski: "
            f"{MIN_GROUPS_FEW})**")


def _ci(interval: dict[str, Any] | None) -> str:
    if not interval:
        return "–"
    if interval.get("low") is None:
        return f"n/a ({interval.get('reason') or 'undefined'})"
    return f"[{interval['low']:.4f}, {interval['high']:.4f}] ({interval['method']})" + unreliable_text(interval)


def _leakage_banner(leakage: dict[str, Any] | None, n_test: int) -> list[str]:
    """A warning at the top when the leakage audit found test/val images with a near-duplicate in train."""
    if leakage is None:
        return []
    lines = []
    for key, split in (("test_with_copy_in_train", "test"), ("val_with_copy_in_train", "validation")):
        count = leakage.get(key) or 0
        if count > 0:
            total = leakage.get(f"n_{split if split == 'test' else 'val'}") or (n_test if split == "test" else "?")
            effect = ("these test metrics are inflated" if split == "test"
                      else "model selection and any threshold chosen on val are biased")
            lines.append(f"> **Leakage: {count} of {total} {split} images have a near-duplicate in train: {effect}.**")
    if not lines:
        lines.append("Leakage audit: no test or validation image has a near-duplicate in train.")
    groups = leakage.get("groups")  # patients across splits (data/groups.py): said apart from copies
    if groups and not groups["clean"]:
        lines.append(f"> **{groups['verdict']}**")
    elif groups:
        lines.append(groups["verdict"])
    return lines + [""]


def write_report_md(outdir: Path, result: dict[str, Any], extra_figures: list[str], cams: list[dict[str, Any]],
                    curves_note: str) -> Path:
    """One page, readable on GitHub, that links every file of the evaluation."""
    m = result["metrics"]
    lines = [f"# Evaluation report — {result['model']}", ""]
    lines += _leakage_banner(result.get("leakage"), m["n"])
    if result.get("synthetic_data"):
        lines += [f"> **{SYNTHETIC_NOTE}**", ""]
    lines += [
        f"- checkpoint: `{result['checkpoint']}`; initialisation: {result.get('initialisation', 'unknown')}",
        f"- data: `{result['data_root']}`, split **{result['split']}** ({m['n']} images: "
        f"{m['support']['benign']} benign, {m['support']['malignant']} malignant)",
        f"- threshold: {m['threshold']:.4f} ({result['threshold_method']}); "
        f"TTA: {'on (8 flips/rotations)' if result['tta'] else 'off'}",
        "",
        "| metric | value | 95 % CI (method) |",
        "|---|---|---|",
    ]
    undefined = m.get("undefined") or {}
    intervals = m.get("intervals") or {}
    for key, spec in METRICS.items():
        if spec.report and key in m:  # a metric registered after an old metrics.json was written is not in it
            value = spec.format(m[key]) if m[key] is not None else _fmt(None, undefined.get(key))
            lines.append(f"| {spec.label} | {value} | {_ci(intervals.get(key))} |")
    lines += ["", f"Confusion: tp {m['tp']}, fp {m['fp']}, tn {m['tn']}, fn {m['fn']} — "
              f"**{m['fn']} malignant image(s) missed**, {m['fp']} benign image(s) flagged.", ""]
    if result.get("val_metrics"):
        v = result["val_metrics"]
        lines += [f"Validation split at the same threshold: accuracy {_fmt(v['accuracy'])}, sensitivity "
                  f"{_fmt(v['recall'])}, specificity {_fmt(v['specificity'])}, AUROC {_fmt(v['auroc'])}.", ""]
    if result.get("group_metrics"):
        g = result["group_metrics"]
        rule = {"any": "malignant if any image is: max probability", "mean": "mean probability",
                "majority": "fraction of images called malignant"}.get(g.get("rule", "mean"), g.get("rule"))
        lines += [f"Group level ({g['n']} groups from manifest.csv, {rule}; threshold {g['threshold']:.4f}): accuracy "
                  f"{_fmt(g['accuracy'])}, sensitivity {_fmt(g['recall'])}, specificity {_fmt(g['specificity'])}, "
                  f"AUROC {_fmt(g['auroc'])}.", ""]
        fallback = (result.get("operating_point") or {}).get("group_threshold_note")
        if fallback:
            lines += [f"> {fallback}", ""]
    lines += _calibration_section(result.get("calibration"))
    lines += _referral_section(result.get("referral"))
    lines += ["## Classification report", "", "```", (outdir / "classification_report.txt").read_text().rstrip(),
              "```", "", "## Figures", ""]
    for name in (*FIGURES, *extra_figures):
        lines += [f"![{name}]({name})", ""]
    if curves_note:
        lines += [f"*{curves_note}*", ""]
    if cams:
        lines += ["## Grad-CAM (explains the predicted class)", "",
                  "Left: image; right: where the evidence for the **predicted** class lies (red = strongest).", ""]
        if cams[0].get("cam_method"):
            lines += [f"Method: {cams[0]['cam_method']}.", ""]
        lines += ["| true | predicted | p(malignant) | overlay |", "|---|---|---|---|"]
        for c in cams:
            rel = Path(c["cam_file"]).relative_to(outdir).as_posix()
            lines.append(f"| {c['true_name']} | {c['pred_name']} | {c['prob']:.3f} | ![]({rel}) |")
        lines.append("")
    lines += ["Files: `metrics.json`, `predictions.csv`, `classification_report.txt`, the figures above"
              + (", `gradcam/`" if cams else "") + "."]
    return write_text(outdir / "report.md", "\n".join(lines) + "\n")


def _calibration_section(calibration: dict[str, Any] | None) -> list[str]:
    if not calibration:
        return []
    return ["## Calibration (temperature scaling)", "",
            f"Temperature T = {calibration['temperature']:.4f}, fitted on the validation logits (minimum NLL); "
            f"probabilities are sigmoid(logit / T) and the threshold above was chosen on them. T travels with the "
            f"threshold in metrics.json's operating_point into predict and export.", "",
            f"Expected calibration error (ECE; {calibration['ece_definition']}): test {_fmt(calibration['ece_before'])}"
            f" before, {_fmt(calibration['ece_after'])} after; validation {_fmt(calibration['val_ece_before'])} "
            f"before, {_fmt(calibration['val_ece_after'])} after.", "",
            "![calibration_before_after.png](calibration_before_after.png)", ""]


def _referral_section(referral: dict[str, Any] | None) -> list[str]:
    if not referral:
        return []
    shown = METRICS["recall"].short  # "sensitivity": the clinician's word for the registry's recall
    lines = ["## Referral curve (per-image uncertainty)", "",
             f"The most uncertain images are referred first (uncertainty: {referral['uncertainty']}); accuracy and "
             f"{shown} are of the images kept.", "",
             f"| referred | kept | accuracy | {shown} |", "|---|---|---|---|"]
    for point in map(read_metrics, referral["points"]):  # an older metrics.json spelled recall "sensitivity"
        if round(point["referred_fraction"] * 100) % 10 == 0:
            lines.append(f"| {point['referred_fraction']:.0%} | {point['kept']} | {_fmt(point['accuracy'])} | "
                         f"{_fmt(point['recall'])} |")
    return lines + ["", "![referral_curve.png](referral_curve.png)", ""]


def write_metrics_json(outdir: Path, result: dict[str, Any]) -> Path:
    body = {**({"note": SYNTHETIC_NOTE} if result.get("synthetic_data") else {}), **result}
    return write_json(outdir / "metrics.json", body)
