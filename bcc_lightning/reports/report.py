"""Write an evaluation's files: metrics.json, classification_report.txt, confusion_matrix.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bcc_lightning.io import write_json, write_text
from bcc_lightning.reports.metrics import classification_report, compute_metrics
from bcc_lightning.reports.plots import confusion_matrix_figure, save_figure

SYNTHETIC_NOTE = "SYNTHETIC DEMO DATA: these numbers say nothing about real microscopy images."


def write_evaluation(outdir: str | Path, labels: Any, probs: Any, threshold: float = 0.5,
                     context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute the metrics once and write every file from them; returns what went into metrics.json."""
    outdir = Path(outdir)
    context = dict(context or {})
    metrics = compute_metrics(labels, probs, threshold)
    synthetic = bool(context.get("synthetic_data"))
    header = f"{SYNTHETIC_NOTE}\n\n" if synthetic else ""
    split = context.get("split", "test")
    report = classification_report(metrics)
    write_text(outdir / "classification_report.txt", header + f"Split: {split}\n" + report)
    title = f"Confusion matrix, {split} split (threshold {threshold:.2f}, n={metrics['n']})"
    if synthetic:
        title += "\nSYNTHETIC DEMO DATA"
    save_figure(confusion_matrix_figure(metrics, title), outdir / "confusion_matrix.png")
    result = {**({"note": SYNTHETIC_NOTE} if synthetic else {}), **context, "metrics": metrics}
    write_json(outdir / "metrics.json", result)
    return result
