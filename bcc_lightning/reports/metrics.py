"""One function from (labels, probabilities, threshold) to every number we report."""

from __future__ import annotations

from typing import Any

import numpy as np

from bcc_lightning.data.labels import CLASS_NAMES


def _div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def auroc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None when only one class is present."""
    pos, neg = probs[labels == 1], probs[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([neg, pos]), kind="mergesort")
    values = np.concatenate([neg, pos])[order]
    ranks = np.empty(len(values))
    # Average ranks over ties.
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    cumulative = np.cumsum(counts)
    avg = cumulative - (counts - 1) / 2.0
    ranks[order] = avg[inverse]
    rank_pos = ranks[len(neg):].sum()
    return float((rank_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def roc_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), one point per distinct score, highest first."""
    order = np.argsort(-probs, kind="mergesort")
    scores, truth = probs[order], labels[order]
    distinct = np.r_[np.where(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(truth)[distinct]
    fps = (distinct + 1) - tps
    pos, neg = max(int(labels.sum()), 1), max(int((1 - labels).sum()), 1)
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos], np.r_[np.inf, scores[distinct]]


def pr_points(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, highest threshold first."""
    order = np.argsort(-probs, kind="mergesort")
    scores, truth = probs[order], labels[order]
    distinct = np.r_[np.where(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(truth)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / max(int(labels.sum()), 1)
    return np.r_[0.0, recall], np.r_[1.0, precision]


def average_precision(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """Area under the precision-recall curve as a step function (scikit-learn's average precision)."""
    if labels.sum() == 0:
        return None
    recall, precision = pr_points(labels, probs)
    return float(np.sum(np.diff(recall) * precision[1:]))


def calibration_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width probability bins: mean predicted probability, observed malignant fraction, count."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                         "mean_prob": float(probs[mask].mean()), "fraction_malignant": float(labels[mask].mean())})
    return rows


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float | None:
    if len(labels) == 0:
        return None
    return float(sum(r["count"] * abs(r["mean_prob"] - r["fraction_malignant"])
                     for r in calibration_bins(labels, probs, bins)) / len(labels))


def choose_threshold(labels: Any, probs: Any, method: str) -> float:
    """Threshold maximising Youden's J (sensitivity + specificity - 1) or F1, found on validation predictions."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if method not in ("youden", "f1"):
        raise ValueError(f"unknown threshold method {method!r}")
    candidates = np.unique(probs)
    best, best_score = 0.5, -np.inf
    for t in candidates:
        m = compute_metrics(labels, probs, float(t))
        score = m["recall"] + m["specificity"] - 1 if method == "youden" else m["f1"]
        if score > best_score + 1e-12:
            best, best_score = float(t), score
    return best


def compute_metrics(labels: Any, probs: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Binary metrics with malignant (1) as the positive class; a prediction is malignant when prob >= threshold."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if labels.shape != probs.shape:
        raise ValueError(f"labels and probs differ in length: {labels.shape} vs {probs.shape}")
    preds = (probs >= threshold).astype(np.int64)
    tp = int(((preds == 1) & (labels == 1)).sum())
    tn = int(((preds == 0) & (labels == 0)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    n = len(labels)
    recall = _div(tp, tp + fn)
    specificity = _div(tn, tn + fp)
    precision = _div(tp, tp + fp)
    npv = _div(tn, tn + fn)
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    return {
        "n": n,
        "threshold": float(threshold),
        "accuracy": _div(tp + tn, n),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": specificity,
        "npv": npv,
        "f1": _div(2 * precision * recall, precision + recall),
        "auroc": auroc(labels, probs),
        "auprc": average_precision(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        "log_loss": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))) if n else None,
        "brier": float(np.mean((probs - labels) ** 2)) if n else None,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "support": {CLASS_NAMES[0]: int((labels == 0).sum()), CLASS_NAMES[1]: int((labels == 1).sum())},
    }


def classification_report(m: dict[str, Any]) -> str:
    """Per-class precision/recall/F1/support, accuracy, macro and weighted averages (sklearn's layout)."""
    support = [m["support"][CLASS_NAMES[0]], m["support"][CLASS_NAMES[1]]]
    # Benign as the positive class is the mirror image: its precision is the NPV, its recall the specificity.
    rows = {
        CLASS_NAMES[0]: (m["npv"], m["specificity"]),
        CLASS_NAMES[1]: (m["precision"], m["recall"]),
    }
    f1 = {k: _div(2 * p * r, p + r) for k, (p, r) in rows.items()}
    total = sum(support)
    width = max(len(name) for name in [*CLASS_NAMES, "weighted avg"])
    lines = [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    for (name, (p, r)), s in zip(rows.items(), support):
        lines.append(f"{name:>{width}}  {p:9.4f} {r:9.4f} {f1[name]:9.4f} {s:9d}")
    lines.append("")
    lines.append(f"{'accuracy':>{width}}  {'':9} {'':9} {m['accuracy']:9.4f} {total:9d}")
    macro = [sum(v[i] for v in rows.values()) / 2 for i in range(2)]
    lines.append(f"{'macro avg':>{width}}  {macro[0]:9.4f} {macro[1]:9.4f} {sum(f1.values()) / 2:9.4f} {total:9d}")
    weights = [_div(s, total) for s in support]
    weighted = [sum(w * v[i] for w, v in zip(weights, rows.values())) for i in range(2)]
    wf1 = sum(w * f for w, f in zip(weights, f1.values()))
    lines.append(f"{'weighted avg':>{width}}  {weighted[0]:9.4f} {weighted[1]:9.4f} {wf1:9.4f} {total:9d}")
    return "\n".join(lines) + "\n"
