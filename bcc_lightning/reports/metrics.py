"""The metric registry, and one function from (labels, probabilities, threshold) to every number we report.

Each metric is ONE entry in `METRICS` (`register_metric`): its key (the one spelling written everywhere), how it
reads, which way is better, how it is computed, its interval kind, whether report.md / the model card / the summary
tables (aggregate, compare) show it, and its training-time logger name. compute_metrics, statistics.metric_intervals,
report, card, aggregate, evaluation and the tasks read this table; adding a metric is one `register_metric` call.
Old spellings (metrics.json of earlier versions) are mapped on read by `canonical` / `read_metrics`, never written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bcc_lightning.data.labels import CLASS_NAMES

CELLS = ("tp", "fp", "tn", "fn")
# Interval kinds, as statistics.metric_intervals computes them.
INTERVAL_KINDS = {
    "wilson": "Wilson score on (successes, denominator); clustered: Wilson with the design effect (Korn-Graubard df)",
    "mover": "MOVER (Newcombe) combination of two component intervals",
    "auroc": "BCa bootstrap over images; clustered: Obuchowski's variance, logit scale, t quantile",
    "bootstrap": "BCa bootstrap over images; clustered: percentile cluster bootstrap over groups",
}
# Spellings earlier versions wrote (metrics.json had "sensitivity" beside "recall"; "acc" is the training-time name
# of accuracy), mapped to the registry's key when old files are read.
ALIASES = {"sensitivity": "recall", "acc": "accuracy"}

CountsFn = Callable[[Any, Any, Any, Any], Any]
ScoresFn = Callable[[np.ndarray, np.ndarray, np.ndarray], "float | None"]


@dataclass(frozen=True)
class Metric:
    """One registered metric (see register_metric for the fields)."""

    key: str
    label: str
    short: str
    higher_is_better: bool
    undefined: str
    counts: CountsFn | None = None
    scores: ScoresFn | None = None
    interval: str | None = "bootstrap"
    proportion: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    mover: tuple[str, str] | None = None
    both_classes: bool = False
    report: bool = True
    card: bool = True
    summary: bool = False
    logger: str | None = None
    torchmetric: str | None = None
    ranks: bool = False
    fmt: str = ".4f"
    bounds: tuple[float, float] = (0.0, 1.0)

    def format(self, value: float | None) -> str:
        return "n/a" if value is None else format(value, self.fmt)


METRICS: dict[str, Metric] = {}


def register_metric(key: str, *, label: str | None = None, short: str | None = None, higher_is_better: bool = True,
                    undefined: str = "undefined", inputs: str = "counts", interval: str | None = "bootstrap",
                    proportion: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
                    mover: tuple[str, str] | None = None, both_classes: bool = False, report: bool = True,
                    card: bool = True, summary: bool = False, logger: str | None = None,
                    torchmetric: str | None = None, ranks: bool = False, fmt: str = ".4f",
                    bounds: tuple[float, float] = (0.0, 1.0)) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a metric; used as a decorator on its function (or called with proportion=... and no function).

    inputs="counts": fn(tp, fp, tn, fn) on numpy arrays (or scalars) -> the metric, NaN where undefined; these are
    vectorised, so their bootstrap intervals are fast (weighted resamples, analytic jackknife for BCa).
    inputs="scores": fn(labels, probs, ranked) -> float | None (ranked: the logits when known, which do not tie).
    interval: one of INTERVAL_KINDS or None (no interval). proportion: for "wilson", the confusion cells of the
    successes and of the denominator, e.g. (("tp",), ("tp", "fn")); mover: the two metrics "mover" averages.
    both_classes: undefined unless both classes are present (its clustered interval counts the smaller class's
    groups). report / card / summary: shown in report.md / the model card / the aggregate and compare tables.
    logger: training-time name (logged as train/<logger>, val/<logger>; early stopping and checkpoint names use
    these); torchmetric: the torchmetrics.classification class that computes it during training; ranks: that class
    takes logits rather than probabilities. fmt: how its value prints. bounds: its range (intervals over folds or
    seeds are clipped to it).
    """
    if key in METRICS or key in ALIASES:
        raise ValueError(f"metric {key!r} is already registered (or is an old spelling of one)")
    if interval is not None and interval not in INTERVAL_KINDS:
        raise ValueError(f"interval must be one of {', '.join(INTERVAL_KINDS)} or None, got {interval!r}")
    if inputs not in ("counts", "scores"):
        raise ValueError(f"inputs must be 'counts' or 'scores', got {inputs!r}")
    if (interval == "wilson") != (proportion is not None) or (interval == "mover") != (mover is not None):
        raise ValueError("interval='wilson' needs proportion=(successes, denominator) and 'mover' needs mover=(a, b)")

    def add(fn: Callable[..., Any] | None) -> Callable[..., Any] | None:
        counts = fn if inputs == "counts" else None
        if proportion is not None and fn is None:
            counts = _proportion_fn(*proportion)
        METRICS[key] = Metric(key, label or key, short or label or key, higher_is_better, undefined, counts,
                              fn if inputs == "scores" else None, interval, proportion, mover, both_classes, report,
                              card, summary, logger, torchmetric, ranks, fmt, tuple(bounds))
        return fn

    return add


def unregister_metric(key: str) -> None:
    """Remove a registered metric (tests that register a toy one clean up with this)."""
    METRICS.pop(key, None)


def _proportion_fn(successes: tuple[str, ...], denominator: tuple[str, ...]) -> CountsFn:
    def fn(tp: Any, fp: Any, tn: Any, fn_: Any) -> Any:
        cells = dict(zip(CELLS, (tp, fp, tn, fn_)))
        return sum(cells[c] for c in successes) / sum(cells[c] for c in denominator)

    return fn


def canonical(key: str) -> str:
    """The registry's spelling of a metric name (old spellings such as acc and sensitivity mapped)."""
    return ALIASES.get(key, key)


def read_metrics(values: dict[str, Any] | None) -> dict[str, Any]:
    """A metrics dict read from an old or new file, under the registry's spellings (the key wins over an alias)."""
    values = dict(values or {})
    for old, new in ALIASES.items():
        if old in values:
            value = values.pop(old)
            values.setdefault(new, value)
    return values


def metric_keys(flag: str | None = None) -> list[str]:
    """Registered keys in table order; flag: only those with report, card, summary, interval or logger set."""
    return [k for k, m in METRICS.items() if flag is None or getattr(m, flag)]


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


# The built-in metrics, in the order every table lists them.
register_metric("accuracy", label="accuracy", interval="wilson", proportion=(("tp", "tn"), CELLS),
                undefined="no images", summary=True, logger="acc", torchmetric="BinaryAccuracy")(None)


@register_metric("balanced_accuracy", label="balanced accuracy", interval="mover", mover=("recall", "specificity"),
                 undefined="needs both classes", both_classes=True, summary=True)
def balanced_accuracy(tp: Any, fp: Any, tn: Any, fn: Any) -> Any:
    return (tp / (tp + fn) + tn / (tn + fp)) / 2


register_metric("recall", label="sensitivity (recall)", short="sensitivity", interval="wilson",
                proportion=(("tp",), ("tp", "fn")), undefined="no malignant images", summary=True, logger="recall",
                torchmetric="BinaryRecall")(None)
register_metric("specificity", label="specificity", interval="wilson", proportion=(("tn",), ("tn", "fp")),
                undefined="no benign images", summary=True)(None)
register_metric("precision", label="precision (PPV)", short="PPV", interval="wilson",
                proportion=(("tp",), ("tp", "fp")), undefined="no image predicted malignant", logger="precision",
                torchmetric="BinaryPrecision")(None)
register_metric("npv", label="NPV", interval="wilson", proportion=(("tn",), ("tn", "fn")),
                undefined="no image predicted benign")(None)


# F1 = 2tp / (2tp + fp + fn): defined (possibly 0) unless there are no malignant images and none predicted.
@register_metric("f1", label="F1", undefined="no malignant images and none predicted malignant", summary=True,
                 logger="f1", torchmetric="BinaryF1Score")
def f1(tp: Any, fp: Any, tn: Any, fn: Any) -> Any:
    return 2 * tp / (2 * tp + fp + fn)


register_metric("auroc", label="AUROC", inputs="scores", interval="auroc", undefined="needs both classes",
                both_classes=True, summary=True, logger="auroc", torchmetric="BinaryAUROC",
                ranks=True)(lambda labels, probs, ranked: auroc(labels, ranked))
register_metric("auprc", label="AUPRC", inputs="scores", undefined="no malignant images",
                both_classes=True)(lambda labels, probs, ranked: average_precision(labels, ranked))
register_metric("brier", label="Brier score", higher_is_better=False, inputs="scores", undefined="no images")(
    lambda labels, probs, ranked: float(np.mean((probs - labels) ** 2)) if len(labels) else None)
register_metric("ece", label="expected calibration error", short="ECE", higher_is_better=False, inputs="scores",
                undefined="no images")(lambda labels, probs, ranked: expected_calibration_error(labels, probs))


@register_metric("log_loss", label="log loss", higher_is_better=False, inputs="scores", interval=None,
                 undefined="no images", report=False, card=False)
def log_loss(labels: np.ndarray, probs: np.ndarray, ranked: np.ndarray) -> float | None:
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))) if len(labels) else None


def value_of(metric: Metric, counts: tuple[int, int, int, int], labels: np.ndarray, probs: np.ndarray,
             ranked: np.ndarray) -> float | None:
    """One metric's value on one set of images; None where it is undefined."""
    if metric.counts is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(metric.counts(*(np.float64(c) for c in counts)))
        return value if np.isfinite(value) else None
    return metric.scores(labels, probs, ranked)


def compute_metrics(labels: Any, probs: Any, threshold: float = 0.5, scores: Any = None) -> dict[str, Any]:
    """Every registered metric, with malignant (1) as the positive class; a prediction is malignant when prob >=
    threshold.

    A metric that is undefined (e.g. sensitivity without malignant images) is None, and `undefined[key]` says why.
    scores: an increasing function of probs that does not saturate (the logit, operating_point.view_logit); AUROC
    and AUPRC rank these when given, since probabilities of confident models round to ties near 1.
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
    result: dict[str, Any] = {"n": len(labels), "threshold": float(threshold)}
    undefined: dict[str, str] = {}
    for key, metric in METRICS.items():
        result[key] = value_of(metric, (tp, fp, tn, fn), labels, probs, ranked)
        if result[key] is None:
            undefined[key] = metric.undefined
    result.update(tp=tp, fp=fp, tn=tn, fn=fn,
                  support={CLASS_NAMES[0]: int((labels == 0).sum()), CLASS_NAMES[1]: int((labels == 1).sum())},
                  undefined=undefined)
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
        lines += ["", "n/a: " + "; ".join(f"{k}: {v}" for k, v in m["undefined"].items())]
    if intervals:
        lines += ["", "95 % confidence intervals:"]
        width = max(width, *(len(name) for name in intervals))  # balanced_accuracy is wider than the class rows
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
