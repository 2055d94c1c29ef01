"""predictions.csv: one schema, written by evaluation and by predict alike.

Columns: path, true_label (empty when unknown, as in predict), pred_label (at `threshold`; empty when the image
could not be read), prob_malignant, threshold, error (why an image could not be scored; empty otherwise),
threshold_method (how the threshold was chosen, e.g. 'youden' or 'fixed'), tta_std (the standard deviation of the
8 TTA views' probabilities, a per-image uncertainty; empty without TTA).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.utils.atomic_io import write_text

# New columns go at the end: readers that index by position keep working.
COLUMNS = ("path", "true_label", "pred_label", "prob_malignant", "threshold", "error", "threshold_method", "tta_std")


def prediction_rows(paths: Sequence[str], probs: Sequence[float | None], threshold: float,
                    labels: Sequence[int] | None = None, errors: Sequence[str] | None = None,
                    method: str = "", spreads: Sequence[float | None] | None = None) -> list[dict[str, Any]]:
    """Rows of predictions.csv; `labels` are the true labels (0/1) when known, `spreads` the TTA std per image."""
    rows = []
    for i, (path, prob) in enumerate(zip(paths, probs)):
        error = errors[i] if errors else ""
        spread = spreads[i] if spreads is not None and not error else None
        rows.append({
            "path": path,
            "true_label": CLASS_NAMES[int(labels[i])] if labels is not None else "",
            "pred_label": "" if prob is None or error else CLASS_NAMES[int(prob >= threshold)],
            "prob_malignant": None if error else prob,
            "threshold": threshold,
            "error": error,
            "threshold_method": method,
            "tta_std": spread,
        })
    return rows


def write_predictions(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        prob, spread = row.get("prob_malignant"), row.get("tta_std")
        writer.writerow({**row, "prob_malignant": "" if prob is None else f"{prob:.6f}",
                         "threshold": f"{row['threshold']:.6f}", "tta_std": "" if spread is None else f"{spread:.6f}"})
    return write_text(path, buffer.getvalue())


def read_predictions(path: str | Path) -> tuple[list[int], list[float]]:
    """(true labels, probabilities) of the scored rows of a predictions.csv with known labels."""
    labels, probs = [], []
    with Path(path).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("true_label") and row.get("prob_malignant"):
                labels.append(CLASS_NAMES.index(row["true_label"]))
                probs.append(float(row["prob_malignant"]))
    return labels, probs
