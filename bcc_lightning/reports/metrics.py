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


def _rate(num: int, den: int, name: str, reason: str, undefined: dict[str, str]) -> float | None:
    """num / den, or None (reason recorded) when the denominator is empty: 0.0 would read as a real failure."""
    if den == 0:
        undefined[name] = reason
        return None
    return float(num / den)


def compute_metrics(labels: Any, probs: Any, threshold: float = 0.5, scores: Any = None) -> dict[str, Any]:
    """Binary metrics with malignant (1) as the positive class; a prediction is malignant when prob >= threshold.

    Rates whose denominator is empty (e.g. sensitivity without malignant images) are None, and
    `undefined[name]` says why. scores: an increasing function of probs that does not saturate (the logit,
    operating_point.view_logit); AUROC and AUPRC rank these when given, since probabilities of confident models
    round to ties near 1.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if labels.shape != probs.shape:
        raise ValueError(f"labels and probs differ in length: {labels.shape} vs {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{int(np.sum(~np.isfinite(probs)))} probabilities are NaN or infinite")
    ranked = probs if scores is None else np.asarray(scores, dtype=np.float64).ravel()
    if ranked.shape != probs.shape or not np.all(np.isfinite(ranked)):
        raise ValueError("scores must be finite and as many as the probabilities")
    preds = (probs >= threshold).astype(np.int64)
    tp = int(((preds == 1) & (labels == 1)).sum())
    tn = int(((preds == 0) & (labels == 0)).sum())
    fp = int(((preds == 1) & (labels == 0)).sum())
    fn = int(((preds == 0) & (labels == 1)).sum())
    n = len(labels)
    undefined: dict[str, str] = {}
    accuracy = _rate(tp + tn, n, "accuracy", "no images", undefined)
    recall = _rate(tp, tp + fn, "recall", "no malignant images", undefined)
    specificity = _rate(tn, tn + fp, "specificity", "no benign images", undefined)
    precision = _rate(tp, tp + fp, "precision", "no image predicted malignant", undefined)
    npv = _rate(tn, tn + fn, "npv", "no image predicted benign", undefined)
    # F1 = 2tp / (2tp + fp + fn): defined (possibly 0) unless there are no malignant images and none predicted.
    f1 = _rate(2 * tp, 2 * tp + fp + fn, "f1", "no malignant images and none predicted malignant", undefined)
    balanced = None if recall is None or specificity is None else (recall + specificity) / 2
    if balanced is None:
        undefined["balanced_accuracy"] = "needs both classes"
    if "recall" in undefined:
        undefined["sensitivity"] = undefined["recall"]
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    result = {
        "n": n,
        "threshold": float(threshold),
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": specificity,
        "npv": npv,
        "f1": f1,
        "auroc": auroc(labels, ranked),
        "auprc": average_precision(labels, ranked),
        "ece": expected_calibration_error(labels, probs),
        "log_loss": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))) if n else None,
        "brier": float(np.mean((probs - labels) ** 2)) if n else None,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "support": {CLASS_NAMES[0]: int((labels == 0).sum()), CLASS_NAMES[1]: int((labels == 1).sum())},
    }
    for key, reason in (("auroc", "needs both classes"), ("auprc", "no malignant images"), ("ece", "no images"),
                        ("log_loss", "no images"), ("brier", "no images")):
        if result[key] is None:
            undefined[key] = reason
    result["undefined"] = undefined
    return result


def _f(value: float | None) -> str:
    return f"{value:9.4f}" if value is not None else f"{'n/a':>9}"


def _mean(values: list[float | None], weights: list[float] | None = None) -> float | None:
    if any(v is None for v in values):
        return None
    weights = weights or [1 / len(values)] * len(values)
    return float(sum(w * v for w, v in zip(weights, values)))


def classification_report(m: dict[str, Any], intervals: dict[str, Any] | None = None) -> str:
    """Per-class precision/recall/F1/support, accuracy, macro and weighted averages (sklearn's layout); undefined
    values print as n/a. With `intervals` (name -> {low, high, method}), a 95 % CI block follows."""
    support = [m["support"][CLASS_NAMES[0]], m["support"][CLASS_NAMES[1]]]
    # Benign as the positive class is the mirror image: its precision is the NPV, its recall the specificity.
    rows = {
        CLASS_NAMES[0]: (m["npv"], m["specificity"]),
        CLASS_NAMES[1]: (m["precision"], m["recall"]),
    }
    f1 = {CLASS_NAMES[0]: _class_f1(m["tn"], m["fn"], m["fp"]), CLASS_NAMES[1]: m["f1"]}
    total = sum(support)
    width = max(len(name) for name in [*CLASS_NAMES, "weighted avg"])
    lines = [f"{'':>{width}}  precision    recall  f1-score   support", ""]
    for (name, (p, r)), s in zip(rows.items(), support):
        lines.append(f"{name:>{width}}  {_f(p)} {_f(r)} {_f(f1[name])} {s:9d}")
    lines.append("")
    lines.append(f"{'accuracy':>{width}}  {'':9} {'':9} {_f(m['accuracy'])} {total:9d}")
    macro = [_mean([v[i] for v in rows.values()]) for i in range(2)]
    lines.append(f"{'macro avg':>{width}}  {_f(macro[0])} {_f(macro[1])} {_f(_mean(list(f1.values())))} {total:9d}")
    weights = [_div(s, total) for s in support]
    weighted = [_mean([v[i] for v in rows.values()], weights) for i in range(2)]
    wf1 = _mean(list(f1.values()), weights)
    lines.append(f"{'weighted avg':>{width}}  {_f(weighted[0])} {_f(weighted[1])} {_f(wf1)} {total:9d}")
    if m.get("undefined"):
        lines += ["", "n/a: " + "; ".join(f"{k}: {v}" for k, v in m["undefined"].items() if k != "sensitivity")]
    if intervals:
        lines += ["", "95 % confidence intervals:"]
        for name, ci in intervals.items():
            value = m.get(name)
            if ci.get("low") is None:
                lines.append(f"{name:>{width}}  {_f(value)}   n/a ({ci.get('reason') or 'undefined'})")
            else:
                flag = f"  (unreliable: {ci.get('n_groups')} groups)" if ci.get("unreliable") else ""
                interval = f"[{ci['low']:.4f}, {ci['high']:.4f}]"
                lines.append(f"{name:>{width}}  {_f(value)}   {interval}  {ci['method']}{flag}")
    return "\n".join(lines) + "\n"


def _class_f1(tp: int, fp: int, fn: int) -> float | None:
    return float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn else None
