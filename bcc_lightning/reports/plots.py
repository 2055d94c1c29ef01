"""Figures for reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bcc_lightning.data.labels import CLASS_NAMES  # noqa: E402
from bcc_lightning.utils.atomic_io import atomic_write  # noqa: E402


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


def save_figure(fig: plt.Figure, path: str | Path, close: bool = True) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".")))
    finally:
        if close:
            plt.close(fig)


def roc_figure(labels: np.ndarray, probs: np.ndarray, m: dict[str, Any], title: str = "") -> plt.Figure:
    from bcc_lightning.reports.metrics import roc_points

    fpr, tpr, _ = roc_points(labels, probs)
    fig, ax = plt.subplots(figsize=(5, 5), constrained_layout=True)
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {m['auroc']:.3f}" if m["auroc"] is not None else "AUROC n/a")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    if m["specificity"] is not None and m["recall"] is not None:  # undefined with one class only
        ax.scatter([1 - m["specificity"]], [m["recall"]], color="red", zorder=3,
                   label=f"threshold {m['threshold']:.2f}")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(0, 1), ylim=(0, 1.01), title=title or "ROC curve (malignant = positive)")
    ax.legend(loc="lower right")
    return fig


def pr_figure(labels: np.ndarray, probs: np.ndarray, m: dict[str, Any], title: str = "") -> plt.Figure:
    from bcc_lightning.reports.metrics import pr_points

    recall, precision = pr_points(labels, probs)
    fig, ax = plt.subplots(figsize=(5, 5), constrained_layout=True)
    ax.step(recall, precision, where="post", lw=2,
            label=f"AUPRC {m['auprc']:.3f}" if m["auprc"] is not None else "AUPRC n/a")
    prevalence = labels.mean() if len(labels) else 0
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"prevalence {prevalence:.2f}")
    if m["recall"] is not None and m["precision"] is not None:  # undefined: no malignant / none predicted so
        ax.scatter([m["recall"]], [m["precision"]], color="red", zorder=3, label=f"threshold {m['threshold']:.2f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", xlim=(0, 1), ylim=(0, 1.01),
           title=title or "Precision-recall curve (malignant = positive)")
    ax.legend(loc="lower left")
    return fig


def calibration_figure(labels: np.ndarray, probs: np.ndarray, m: dict[str, Any], title: str = "") -> plt.Figure:
    from bcc_lightning.reports.metrics import calibration_bins

    rows = calibration_bins(labels, probs)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True, constrained_layout=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.plot([r["mean_prob"] for r in rows], [r["fraction_malignant"] for r in rows], "o-", lw=2,
            label=f"model (ECE {m['ece']:.3f})" if m["ece"] is not None else "model")
    ax.set(ylabel="observed fraction malignant", ylim=(0, 1.01), title=title or "Reliability diagram")
    ax.legend(loc="upper left")
    hist.hist([probs[labels == 0], probs[labels == 1]], bins=np.linspace(0, 1, 11), stacked=True,
              label=["benign", "malignant"], color=["tab:blue", "tab:red"])
    hist.set(xlabel="predicted probability of malignant", ylabel="images", xlim=(0, 1))
    hist.legend(fontsize=8)
    return fig


def training_curves_figure(rows: list[dict[str, float]], source: str, title: str = "") -> plt.Figure:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for stage, style in (("train", "o-"), ("val", "s-")):
            points = [(e, r[f"{stage}/{metric}"]) for e, r in zip(epochs, rows) if f"{stage}/{metric}" in r]
            if points:
                ax.plot(*zip(*points), style, label=stage)
        ax.set(xlabel="epoch", ylabel="accuracy" if metric == "acc" else "BCE loss", title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or f"Training curves (from {source})")
    return fig


def predictions_grid_figure(images: list[Any], labels: list[int], probs: list[float], threshold: float,
                            title: str = "") -> plt.Figure:
    """A grid of images with true/predicted class and probability; wrong predictions framed in red."""
    n = len(images)
    cols = min(6, max(1, n))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, label, prob in zip(axes.ravel(), images, labels, probs):
        predicted = int(prob >= threshold)
        wrong = predicted != label
        ax.imshow(image)
        ax.set_title(f"true {CLASS_NAMES[label]}\npred {CLASS_NAMES[predicted]} (p={prob:.2f})", fontsize=8,
                     color="red" if wrong else "black")
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(3)
    fig.suptitle(title or f"Random test predictions (threshold {threshold:.2f}; red = wrong)")
    return fig


def reliability_before_after_figure(labels: np.ndarray, before: np.ndarray, after: np.ndarray, temperature: float,
                                    title: str = "") -> plt.Figure:
    """Reliability diagrams before and after temperature scaling on one axis (positive class, 10 equal-width
    bins), with each curve's ECE."""
    from bcc_lightning.reports.metrics import calibration_bins, expected_calibration_error

    fig, ax = plt.subplots(figsize=(5, 5), constrained_layout=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for probs, name, style in ((before, "before (T = 1)", "o-"), (after, f"after (T = {temperature:.3f})", "s-")):
        rows = calibration_bins(labels, probs)
        ece = expected_calibration_error(labels, probs)
        ax.plot([r["mean_prob"] for r in rows], [r["fraction_malignant"] for r in rows], style, lw=2,
                label=f"{name}, ECE {ece:.3f}" if ece is not None else name)
    ax.set(xlabel="predicted probability of malignant", ylabel="observed fraction malignant", xlim=(0, 1),
           ylim=(0, 1.01), title=title or "Reliability diagram before/after temperature scaling")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def referral_figure(points: list[dict[str, Any]], uncertainty: str, title: str = "") -> plt.Figure:
    """Accuracy and sensitivity of the kept images against the fraction of the most uncertain images referred."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    fractions = [p["referred_fraction"] for p in points]
    for key, label, style in (("accuracy", "accuracy", "o-"), ("recall", "sensitivity", "s-")):
        values = [np.nan if p[key] is None else p[key] for p in points]
        ax.plot(fractions, values, style, lw=2, label=label)
    ax.set(xlabel=f"fraction referred (most uncertain first; {uncertainty})", ylabel="on the kept images",
           ylim=(0, 1.01), title=title or "Referral curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def compare_roc_figure(labels: np.ndarray, curves: list[tuple[str, np.ndarray, float, float | None]],
                       title: str = "") -> plt.Figure:
    """Overlaid ROC curves of models scored on the same images; curves: (name, probs, threshold, AUROC)."""
    from bcc_lightning.reports.metrics import roc_points

    fig, ax = plt.subplots(figsize=(5.5, 5.5), constrained_layout=True)
    for (name, probs, threshold, auroc), color in zip(curves, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        fpr, tpr, _ = roc_points(labels, probs)
        ax.plot(fpr, tpr, lw=2, color=color, label=f"{name} (AUROC {auroc:.3f})" if auroc is not None else name)
        pred = probs >= threshold
        pos, neg = max(int(labels.sum()), 1), max(int((1 - labels).sum()), 1)
        ax.scatter([np.sum(pred & (labels == 0)) / neg], [np.sum(pred & (labels == 1)) / pos], color=color,
                   edgecolor="black", zorder=3, label=f"{name} at threshold {threshold:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="chance")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           xlim=(0, 1), ylim=(0, 1.01), title=title or "ROC curves on the same images (malignant = positive)")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def stain_stress_figure(rows: list[dict[str, Any]]) -> plt.Figure:
    """AUROC and accuracy against the strength of the HED stain perturbation."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    strengths = [r["strength"] for r in rows]
    for key, label in (("auroc", "AUROC"), ("accuracy", "accuracy")):
        values = [np.nan if r[key] is None else r[key] for r in rows]
        ax.plot(strengths, values, marker="o", label=label)
    ax.set_xlabel("HED perturbation strength (scale and shift per stain)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Stain stress test")
    fig.tight_layout()
    return fig
