"""Write an evaluation's files from labels and probabilities (metrics, report text, figures, report.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bcc_lightning.reports.metrics import classification_report, compute_metrics
from bcc_lightning.reports.plots import (
    calibration_figure,
    confusion_matrix_figure,
    pr_figure,
    roc_figure,
    save_figure,
)
from bcc_lightning.utils.atomic_io import write_json, write_text

SYNTHETIC_NOTE = "SYNTHETIC DEMO DATA: these numbers say nothing about real microscopy images."
FIGURES = ("confusion_matrix.png", "roc_curve.png", "pr_curve.png", "calibration.png")


def write_metric_files(outdir: str | Path, labels: Any, probs: Any, threshold: float, split: str,
                       synthetic: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """classification_report.txt and the four metric figures; returns (metrics, {file name: figure}).

    The figures are returned (already saved) so that callers can also send them to TensorBoard.
    """
    outdir = Path(outdir)
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    metrics = compute_metrics(labels, probs, threshold)
    header = f"{SYNTHETIC_NOTE}\n\n" if synthetic else ""
    write_text(outdir / "classification_report.txt",
               header + f"Split: {split}, threshold {threshold:.4f}\n" + classification_report(metrics))
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


def _fmt(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def write_report_md(outdir: Path, result: dict[str, Any], extra_figures: list[str], cams: list[dict[str, Any]],
                    curves_note: str) -> Path:
    """One page, readable on GitHub, that links every file of the evaluation."""
    m = result["metrics"]
    lines = [f"# Evaluation report — {result['model']}", ""]
    if result.get("synthetic_data"):
        lines += [f"> **{SYNTHETIC_NOTE}**", ""]
    lines += [
        f"- checkpoint: `{result['checkpoint']}`",
        f"- data: `{result['data_root']}`, split **{result['split']}** ({m['n']} images: "
        f"{m['support']['benign']} benign, {m['support']['malignant']} malignant)",
        f"- threshold: {m['threshold']:.4f} ({result['threshold_method']}); "
        f"TTA: {'on (8 flips/rotations)' if result['tta'] else 'off'}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    rows = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
            ("recall", "sensitivity (recall)"), ("specificity", "specificity"), ("precision", "precision (PPV)"),
            ("npv", "NPV"), ("f1", "F1"), ("auroc", "AUROC"), ("auprc", "AUPRC"), ("brier", "Brier score"),
            ("ece", "expected calibration error"))
    for key, name in rows:
        lines.append(f"| {name} | {_fmt(m[key])} |")
    lines += ["", f"Confusion: tp {m['tp']}, fp {m['fp']}, tn {m['tn']}, fn {m['fn']} — "
              f"**{m['fn']} malignant image(s) missed**, {m['fp']} benign image(s) flagged.", ""]
    if result.get("val_metrics"):
        v = result["val_metrics"]
        lines += [f"Validation split at the same threshold: accuracy {_fmt(v['accuracy'])}, sensitivity "
                  f"{_fmt(v['recall'])}, specificity {_fmt(v['specificity'])}, AUROC {_fmt(v['auroc'])}.", ""]
    if result.get("group_metrics"):
        g = result["group_metrics"]
        lines += [f"Group level ({g['n']} groups from manifest.csv, mean probability per group): accuracy "
                  f"{_fmt(g['accuracy'])}, sensitivity {_fmt(g['recall'])}, specificity {_fmt(g['specificity'])}, "
                  f"AUROC {_fmt(g['auroc'])}.", ""]
    lines += ["## Classification report", "", "```", (outdir / "classification_report.txt").read_text().rstrip(),
              "```", "", "## Figures", ""]
    for name in (*FIGURES, *extra_figures):
        lines += [f"![{name}]({name})", ""]
    if curves_note:
        lines += [f"*{curves_note}*", ""]
    if cams:
        lines += ["## Grad-CAM (explains the predicted class)", "",
                  "Left: image; right: where the evidence for the **predicted** class lies (red = strongest).", "",
                  "| true | predicted | p(malignant) | overlay |", "|---|---|---|---|"]
        for c in cams:
            rel = Path(c["cam_file"]).relative_to(outdir).as_posix()
            lines.append(f"| {c['true_name']} | {c['pred_name']} | {c['prob']:.3f} | ![]({rel}) |")
        lines.append("")
    lines += ["Files: `metrics.json`, `predictions.csv`, `classification_report.txt`, the figures above"
              + (", `gradcam/`" if cams else "") + "."]
    return write_text(outdir / "report.md", "\n".join(lines) + "\n")


def write_metrics_json(outdir: Path, result: dict[str, Any]) -> Path:
    body = {**({"note": SYNTHETIC_NOTE} if result.get("synthetic_data") else {}), **result}
    return write_json(outdir / "metrics.json", body)
