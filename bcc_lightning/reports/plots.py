"""Figures for reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bcc_lightning.data.labels import CLASS_NAMES  # noqa: E402
from bcc_lightning.io import atomic_write  # noqa: E402


def confusion_matrix_figure(m: dict[str, Any], title: str = "") -> plt.Figure:
    """Counts and row-normalised rates side by side; rows are the true class, columns the predicted one."""
    counts = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    for ax, data, fmt, name in ((axes[0], counts, "d", "counts"), (axes[1], rates, ".2f", "row-normalised")):
        ax.imshow(data, cmap="Blues", vmin=0, vmax=data.max() if data.max() > 0 else 1)
        for i in range(2):
            for j in range(2):
                value = format(data[i, j], fmt)
                dark = data[i, j] > (data.max() / 2 if data.max() else 1)
                ax.text(j, i, value, ha="center", va="center", fontsize=14, color="white" if dark else "black")
        ax.set_xticks([0, 1], [f"pred {c}" for c in CLASS_NAMES])
        ax.set_yticks([0, 1], [f"true {c}" for c in CLASS_NAMES])
        ax.set_title(name)
    fig.suptitle(title or f"Confusion matrix (threshold {m['threshold']:.2f}, n={m['n']})")
    return fig


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".")))
    finally:
        plt.close(fig)
