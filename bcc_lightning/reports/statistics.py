"""Intervals and tests for reported numbers.

Over folds or seeds: `t_interval`, `corrected_t_interval` / `corrected_resampled_t` (Nadeau & Bengio 2003) and
`wilcoxon`. Over the images of one test set: `wilson_interval`, `bootstrap_ci` (BCa over images, or a cluster
percentile bootstrap over groups such as patients), `metric_intervals` (all of compute_metrics' scores at once),
`delong_test`, `mcnemar_test` and `paired_bootstrap_diff`. When images cluster in groups (patients):
`clustered_delong_test` (Obuchowski 1997), `clustered_mcnemar_test` (Durkalski et al. 2003),
`clustered_proportion_interval` (Wilson with the design effect and Korn & Graubard's degrees-of-freedom correction)
and `clustered_auroc_interval` (Obuchowski's variance, logit scale, t quantile).

Every result names the method that produced it. Undefined numbers are None, with a `reason`; a fallback that was
taken (e.g. BCa -> percentile) is recorded in `note`. Every interval records how many groups stand behind it
(`n_groups`; per class in details["groups"] where the metric is class-conditional); with fewer than MIN_GROUPS
groups (MIN_GROUPS_FEW for the few-cluster methods) it is marked `unreliable`. An interval never has zero width:
where the data cannot move a number (one group, a perfect separation) the interval is None with the reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

from bcc_lightning.reports.metrics import CELLS, METRICS, canonical

MetricFn = Callable[[np.ndarray, np.ndarray], "float | None"]

# Score metrics with a fast (vectorised, weighted) implementation here; every registered counts metric
# (metrics.register_metric(inputs="counts")) is vectorised too. Other registered metrics are bootstrapped as
# functions (scipy.stats.bootstrap).
SCORE_METRICS = ("auroc", "auprc", "brier", "ece")


def _vectorised(name: str) -> bool:
    return name in SCORE_METRICS or (name in METRICS and METRICS[name].counts is not None)


def named_metrics() -> list[str]:
    """Metric names bootstrap_ci and paired_bootstrap_diff take: every registered metric (old spellings too)."""
    return list(METRICS)
_CELL_BUDGET = 4_000_000  # resamples x images per chunk: bounds memory at ~100 MB whatever n is
# Below MIN_GROUPS groups the percentile cluster bootstrap undercovers (benchmarks/statistics_coverage.py, nominal
# 95 %, patients x 12 images: accuracy 74 / 83 / 87 / 92 / 95 % at 3 / 5 / 10 / 20 / 40 groups, AUROC 38 / 68 / 82 /
# 91 / 93 %), so its intervals are marked unreliable there. The few-cluster methods (the design-effect Wilson with
# Korn-Graubard df, Obuchowski's AUROC variance with a t quantile) covered 92-100 % from 5 groups on, so theirs are
# marked unreliable only below MIN_GROUPS_FEW.
MIN_GROUPS = 20
MIN_GROUPS_FEW = 5


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval; low/high are None (with a reason) where undefined."""

    estimate: float | None
    low: float | None
    high: float | None
    level: float
    method: str
    n: int = 0
    reason: str | None = None
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    n_groups: int | None = None  # groups (patients) behind the interval; None when images are the units
    unreliable: bool = False  # too few groups for the method to cover (MIN_GROUPS, MIN_GROUPS_FEW): a rough guide

    @property
    def defined(self) -> bool:
        return self.low is not None and self.high is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HypothesisResult:
    """A two-sided test: statistic, p-value, method; `interval` is the effect's interval where the method gives one."""

    statistic: float | None
    p_value: float | None
    method: str
    n: int
    interval: Interval | None = None
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return float(level)


def _finite(values: Any, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite numbers (drop missing runs first)")
    return x


def _binary(labels: Any, probs: Any, *more: Any) -> tuple[np.ndarray, ...]:
    y = np.asarray(labels).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (benign) or 1 (malignant)")
    arrays = [_finite(p, "probabilities") for p in (probs, *more)]
    if any(len(a) != len(y) for a in arrays):
        raise ValueError(f"labels and probabilities differ in length: {len(y)} vs {[len(a) for a in arrays]}")
    return (y.astype(np.float64), *arrays)


# ---------------------------------------------------------------------------------------------------------------
# Over folds or seeds
# ---------------------------------------------------------------------------------------------------------------

def _bounded(interval: Interval, bounds: tuple[float, float] | None) -> Interval:
    """Clip an interval of a bounded quantity to its range, saying so; a zero-width one becomes None with a reason.

    Clipping cannot lose coverage: the true value lies inside the bounds, so it is inside the clipped interval
    whenever it was inside the original one (benchmarks/statistics_coverage.py measures both)."""
    if not interval.defined:
        return interval
    if interval.high - interval.low <= 1e-12 * max(1.0, abs(interval.estimate or 0.0)):
        return replace(interval, low=None, high=None,
                       reason="all values are equal: no spread to estimate an interval from")
    if bounds is None:
        return interval
    low, high = max(interval.low, bounds[0]), min(interval.high, bounds[1])
    if (low, high) == (interval.low, interval.high):
        return interval
    note = (f"clipped to [{bounds[0]:g}, {bounds[1]:g}] (the t interval reached [{interval.low:.4f}, "
            f"{interval.high:.4f}]; the metric cannot leave its range, and clipping keeps the coverage)")
    return replace(interval, low=low, high=high, note="; ".join(filter(None, [interval.note, note])),
                   details={**interval.details, "unclipped": [interval.low, interval.high]})


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95,
               bounds: tuple[float, float] | None = None) -> Interval:
    """Mean with a Student-t interval (n-1 df): right for i.i.d. scores, e.g. seeds on fixed data.

    bounds: the metric's range (e.g. (0, 1) for a proportion or AUROC): the interval is clipped to it, with a note.
    Equal values give no interval (None, with the reason) rather than one of zero width."""
    level = _check_level(level)
    x = _finite(values)
    method = "Student t (n-1 df)"
    if len(x) == 0:
        return Interval(None, None, None, level, method, 0, reason="no values")
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, None, None, level, method, 1, reason="one value: no spread to estimate",
                        details={"sd": None})
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(len(x))
    q = float(stats.t.ppf((1 + level) / 2, len(x) - 1))
    return _bounded(Interval(mean, mean - q * se, mean + q * se, level, method, len(x),
                             details={"sd": sd, "se": se, "df": len(x) - 1}), bounds)


def logit_t_interval(values: Sequence[float] | np.ndarray, n_test: float, level: float = 0.95) -> Interval:
    """Student-t interval of the mean on the logit scale, mapped back: inside (0, 1) by construction.

    Values of exactly 0 or 1 are moved half an image inwards (the empirical logit, 0.5 / n_test), since the logit
    of 0 or 1 is infinite. Compared with the clipped t interval in benchmarks/statistics_coverage.py."""
    level = _check_level(level)
    x = _finite(values)
    method = "Student t on the logit scale (n-1 df), back-transformed"
    if len(x) < 2:
        return Interval(float(x.mean()) if len(x) else None, None, None, level, method, len(x),
                        reason="fewer than two values: no spread to estimate")
    eps = 0.5 / max(float(n_test), 1.0)
    z = np.log(np.clip(x, eps, 1 - eps)) - np.log1p(-np.clip(x, eps, 1 - eps))
    inner = t_interval(z, level)
    if not inner.defined:
        return Interval(float(x.mean()), None, None, level, method, len(x), reason=inner.reason)
    return Interval(float(x.mean()), float(1 / (1 + math.exp(-inner.low))), float(1 / (1 + math.exp(-inner.high))),
                    level, method, len(x), details={"logit_mean": inner.estimate, "eps": eps})


def _corrected(values: Any, n_train: float, n_test: float) -> tuple[np.ndarray, float, float | None, float | None]:
    if not (n_train > 0 and n_test > 0):
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    x = _finite(values)
    if len(x) < 2:
        return x, n_test / n_train, None, None
    sd = float(x.std(ddof=1))
    # Nadeau & Bengio (2003): overlapping training sets correlate the J scores; the heuristic correlation
    # n_test / (n_train + n_test) turns var/J into var * (1/J + n_test/n_train).
    factor = 1 / len(x) + n_test / n_train
    return x, n_test / n_train, sd, sd * math.sqrt(factor)


def corrected_t_interval(values: Sequence[float] | np.ndarray, n_train: float, n_test: float,
                         level: float = 0.95, bounds: tuple[float, float] | None = None) -> Interval:
    """Mean over (repeated) k-fold runs with the Nadeau-Bengio corrected variance, J-1 df.

    n_train, n_test: images used to train and to score one fold (averages if folds differ). bounds: as t_interval.
    """
    level = _check_level(level)
    x, ratio, sd, se = _corrected(values, n_train, n_test)
    method = "Nadeau-Bengio corrected t (J-1 df, variance x (1/J + n_test/n_train))"
    if len(x) == 0:
        return Interval(None, None, None, level, method, 0, reason="no values")
    mean = float(x.mean())
    if se is None:
        return Interval(mean, None, None, level, method, len(x), reason="one value: no spread to estimate")
    q = float(stats.t.ppf((1 + level) / 2, len(x) - 1))
    return _bounded(Interval(mean, mean - q * se, mean + q * se, level, method, len(x),
                             details={"sd": sd, "se": se, "df": len(x) - 1, "n_test_over_n_train": ratio}), bounds)


def corrected_resampled_t(differences: Sequence[float] | np.ndarray, n_train: float, n_test: float,
                          level: float = 0.95) -> HypothesisResult:
    """Nadeau-Bengio corrected resampled t-test of paired per-fold differences (two-sided, H0: mean 0)."""
    interval = corrected_t_interval(differences, n_train, n_test, level)
    method = "Nadeau-Bengio corrected resampled t-test (J-1 df)"
    n = interval.n
    se = interval.details.get("se")
    if se is None:
        return HypothesisResult(None, None, method, n, interval, reason=interval.reason)
    mean, df = interval.estimate, interval.details["df"]
    if se == 0:
        if mean == 0:
            return HypothesisResult(0.0, 1.0, method, n, interval, reason="all differences are zero")
        return HypothesisResult(None, None, method, n, interval,
                                reason="all differences are equal and non-zero: no spread to test against")
    t = mean / se
    return HypothesisResult(float(t), float(2 * stats.t.sf(abs(t), df)), method, n, interval, details={"df": df})


def wilcoxon(differences: Sequence[float] | np.ndarray) -> HypothesisResult:
    """Two-sided Wilcoxon signed-rank test of paired differences (zeros dropped, as in Wilcoxon's method).

    Exact null distribution when there are no ties and at most 50 non-zero differences; with ties, scipy's exact
    permutation distribution up to 13 differences (at most 8,192 sign patterns); otherwise the tie-corrected normal
    approximation.
    """
    # Fold metrics are ratios of counts: equal differences can disagree in the last bits, which would hide ties
    # and zeros from the exact test.
    d = np.round(_finite(differences, "differences"), 12)
    nonzero = d[d != 0]
    n, n_zero = len(nonzero), int(len(d) - len(nonzero))
    base = "Wilcoxon signed-rank"
    if len(d) == 0:
        return HypothesisResult(None, None, base, 0, reason="no differences")
    if n == 0:
        return HypothesisResult(0.0, 1.0, base, len(d), reason="all differences are zero: no evidence of a difference",
                                details={"n_nonzero": 0, "n_zero": n_zero})
    ties = len(np.unique(np.abs(nonzero))) < n
    details: dict[str, Any] = {"n_nonzero": n, "n_zero": n_zero, "ties": bool(ties)}
    if not ties and n <= 50:
        method: Any = "exact"
        name = f"{base}, exact null distribution"
        details["min_attainable_p"] = min(1.0, 2.0 / 2**n)
    elif ties and n <= 13:
        # 2**13 = 8,192 <= n_resamples, so scipy enumerates every sign pattern: exact given the tied ranks.
        method = stats.PermutationMethod(n_resamples=9999, rng=0)
        name = f"{base}, exact permutation distribution (ties)"
        details["min_attainable_p"] = min(1.0, 2.0 / 2**n)
    else:
        method = "asymptotic"
        name = f"{base}, normal approximation (tie-corrected)"
    result = stats.wilcoxon(nonzero, method=method)
    return HypothesisResult(float(result.statistic), float(result.pvalue), name, len(d), details=details)


# ---------------------------------------------------------------------------------------------------------------
# Over the images of one test set
# ---------------------------------------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval for a proportion successes / n (independent trials)."""
    level = _check_level(level)
    if not (0 <= successes <= n) or int(successes) != successes or int(n) != n:
        raise ValueError(f"need integers 0 <= successes <= n, got {successes} and {n}")
    method = "Wilson score"
    if n == 0:
        return Interval(None, None, None, level, method, 0, reason="no cases (denominator 0)")
    z = float(stats.norm.ppf((1 + level) / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), level, method, int(n),
                    details={"successes": int(successes)})


class _Sample:
    """Precomputed views of (labels, probs) so that any weighting of the images is scored in O(images)."""

    def __init__(self, y: np.ndarray, p: np.ndarray, threshold: float, bins: int = 10, rank: np.ndarray | None = None):
        # rank: what AUROC and AUPRC order the images by (the logit when given: it does not saturate near 1).
        self.y, self.p, self.n = y, p, len(y)
        self.r = p if rank is None else rank
        pred = p >= threshold
        # Confusion cells as columns (tp, fp, tn, fn): weights @ cells gives the four weighted counts.
        self.cells = np.stack([pred & (y == 1), pred & (y == 0), ~pred & (y == 0), ~pred & (y == 1)], 1).astype(float)
        self.cell_of = self.cells.argmax(1)
        self.sq = (p - y) ** 2
        # Same bins as metrics.calibration_bins.
        edges = np.linspace(0, 1, bins + 1)
        self.bin_of = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
        onehot = np.eye(bins)[self.bin_of]
        self.bin_gap = onehot * (p - y)[:, None]
        # Ascending order and the start of each run of equal scores (ties share a rank).
        self.order = np.argsort(self.r, kind="mergesort")
        self.y_sorted = y[self.order]
        self.starts = np.r_[0, np.flatnonzero(np.diff(self.r[self.order])) + 1] if self.n else np.zeros(0, int)

    def weighted(self, names: Sequence[str], w: np.ndarray) -> np.ndarray:
        """Metrics (columns, in `names` order) for each row of image weights w (resamples x images)."""
        out = np.empty((len(w), len(names)))
        total = w.sum(1)
        counts = w @ self.cells if any(METRICS[m].counts is not None for m in names) else None
        with np.errstate(divide="ignore", invalid="ignore"):
            for j, name in enumerate(names):
                if METRICS[name].counts is not None:
                    out[:, j] = _from_counts(name, *counts.T)
                elif name == "brier":
                    out[:, j] = w @ self.sq / total
                elif name == "ece":
                    out[:, j] = np.abs(w @ self.bin_gap).sum(1) / total
                else:
                    out[:, j] = self._ranking(name, w)
        return out

    def _ranking(self, name: str, w: np.ndarray) -> np.ndarray:
        ws = w[:, self.order]
        pos = np.add.reduceat(ws * self.y_sorted, self.starts, axis=1)
        neg = np.add.reduceat(ws * (1 - self.y_sorted), self.starts, axis=1)
        n_pos, n_neg = pos.sum(1), neg.sum(1)
        if name == "auroc":  # Mann-Whitney with ties counted half
            below = np.cumsum(neg, 1) - neg
            return (pos * (below + 0.5 * neg)).sum(1) / (n_pos * n_neg)
        # Average precision (metrics.average_precision): highest score first, one step per distinct score.
        tps, fps = np.cumsum(pos[:, ::-1], 1), np.cumsum(neg[:, ::-1], 1)
        precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
        recall = tps / n_pos[:, None]
        return (np.diff(recall, axis=1, prepend=0.0) * precision).sum(1)

    def jackknife(self, name: str) -> np.ndarray:
        """Leave-one-image-out values, analytic where possible (O(n) or O(n log n))."""
        n = self.n
        if n < 2:
            return np.full(n, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            if METRICS[name].counts is not None:
                # Leaving an image out only decrements its own confusion cell: four possible values.
                values = _from_counts(name, *(self.cells.sum(0)[None, :] - np.eye(4)).T)
                return values[self.cell_of]
            if name == "brier":
                return (self.sq.sum() - self.sq) / (n - 1)
            if name == "ece":
                gap = self.bin_gap.sum(0)
                own = gap[self.bin_of]
                return (np.abs(gap).sum() - np.abs(own) + np.abs(own - (self.p - self.y))) / (n - 1)
            if name == "auroc":
                return self._auroc_jackknife()
        return self._auprc_jackknife()

    def _auroc_jackknife(self) -> np.ndarray:
        pos, neg = self.y == 1, self.y == 0
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        out = np.full(self.n, np.nan)
        if n_pos == 0 or n_neg == 0:
            return out
        # DeLong placements: the share of the other class each image beats (ties half).
        ranks = stats.rankdata(self.r)
        v10 = (ranks[pos] - stats.rankdata(self.r[pos])) / n_neg
        v01 = 1 - (ranks[neg] - stats.rankdata(self.r[neg])) / n_pos
        auc = v10.mean()
        if n_pos > 1:
            out[pos] = (n_pos * auc - v10) / (n_pos - 1)
        if n_neg > 1:
            out[neg] = (n_neg * auc - v01) / (n_neg - 1)
        return out

    def _auprc_jackknife(self) -> np.ndarray:
        # Average precision = sum over distinct scores v (highest first) of pos_v / P * TPS_v / D_v, with TPS_v and
        # D_v the positives and images scoring >= v. Leaving out an image at score k lowers TPS (a positive) or
        # only D (a negative) for every v >= k: prefix sums of the unchanged terms and suffix sums of the lowered
        # ones give every leave-one-out value in O(n).
        pos = np.add.reduceat(self.y_sorted, self.starts)[::-1]
        neg = np.add.reduceat(1 - self.y_sorted, self.starts)[::-1]
        tps, depth = np.cumsum(pos), np.cumsum(pos + neg)
        n_pos = tps[-1]
        if n_pos == 0:
            return np.full(self.n, np.nan)
        lowered = depth - 1

        def safe(num: np.ndarray) -> np.ndarray:
            return np.divide(num, lowered, out=np.zeros_like(num), where=lowered > 0)

        before = np.r_[0.0, np.cumsum(pos * tps / depth)[:-1]]
        after_pos = np.r_[np.cumsum((pos * safe(tps - 1))[::-1])[::-1][1:], 0.0]
        at_pos = safe((pos - 1) * (tps - 1))
        from_neg = np.cumsum((pos * safe(tps))[::-1])[::-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            drop_pos = (before + at_pos + after_pos) / (n_pos - 1)
        drop_neg = (before + from_neg) / n_pos
        # Distinct-score index of each image, counted from the highest score.
        first = np.zeros(self.n, dtype=np.int64)
        first[self.starts] = 1
        rank = np.empty(self.n, dtype=np.int64)
        rank[self.order] = np.cumsum(first) - 1
        level = len(self.starts) - 1 - rank
        return np.where(self.y == 1, drop_pos[level], drop_neg[level])


def _from_counts(name: str, tp: Any, fp: Any, tn: Any, fn: Any) -> np.ndarray:
    """A count metric (the registry's function) from (weighted) confusion counts; NaN where undefined
    (compute_metrics reports None there)."""
    tp, fp, tn, fn = (np.asarray(v, dtype=float) for v in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(METRICS[name].counts(tp, fp, tn, fn), dtype=float)


def _metric_name(metric: str) -> str:
    name = canonical(metric)
    if name not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; registered metrics: {', '.join(METRICS)} "
                         "(or pass a function metric(labels, probs) -> float | None)")
    return name


def _as_function(name: str) -> MetricFn:
    """A registered metric without a vectorised form, as metric(labels, probs) (it ranks the probabilities)."""
    spec = METRICS[name]
    return lambda labels, probs: spec.scores(labels, probs, probs)


def _group_codes(groups: Any, n: int) -> tuple[np.ndarray, int]:
    g = np.asarray(groups).ravel()
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries for {n} images")
    _, codes = np.unique(g, return_inverse=True)
    return codes.ravel(), int(codes.max()) + 1 if n else 0


def _resample(stat: Callable[[np.ndarray], np.ndarray], n: int, codes: np.ndarray | None, n_groups: int,
              n_resamples: int, seed: int) -> np.ndarray:
    """Statistics (resamples x k) over bootstrap weightings of the images: each row of weights counts how often
    an image (or its whole group) was drawn, so no resample is materialised."""
    rng = np.random.default_rng(seed)
    units = n_groups if codes is not None else n
    step = max(1, min(n_resamples, _CELL_BUDGET // max(n, 1)))
    chunks = []
    for start in range(0, n_resamples, step):
        b = min(step, n_resamples - start)
        draws = rng.integers(0, units, (b, units)) + units * np.arange(b)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * units).reshape(b, units).astype(float)
        chunks.append(stat(counts[:, codes] if codes is not None else counts))
    return np.concatenate(chunks)


def _from_distribution(estimate: float, boot: np.ndarray, jack: np.ndarray | None, level: float,
                       label: str, n: int, details: dict[str, Any]) -> Interval:
    """Percentile or BCa (Efron 1987) interval from bootstrap values; BCa needs jackknife values."""
    finite = boot[np.isfinite(boot)]
    dropped = len(boot) - len(finite)
    details = {**details, "n_resamples": len(boot), "undefined_resamples": dropped}
    notes = [f"{dropped} of {len(boot)} resamples undefined (e.g. one class only) and dropped"] if dropped else []
    if len(finite) < 2:
        return Interval(estimate, None, None, level, f"percentile {label}", n,
                        reason="fewer than two resamples gave a defined value", details=details)
    alpha = (1 - level) / 2
    quantiles, method = np.array([alpha, 1 - alpha]), f"percentile {label}"
    if jack is not None:
        bca, why = _bca_quantiles(estimate, finite, jack, alpha)
        if bca is not None:
            quantiles, method = bca, f"BCa {label}"
        else:
            notes.append(f"BCa not usable ({why}): percentile interval instead")
    low, high = np.quantile(finite, quantiles)
    if high - low <= 1e-12 * max(1.0, abs(estimate)):
        # e.g. a perfect separation, one group of a class, or two models that agree on every image: the resamples
        # cannot move the number, which is no evidence that it is exact.
        return Interval(estimate, None, None, level, method, n, note="; ".join(notes) or None, details=details,
                        reason="every resample gave the same value, so the bootstrap cannot measure the "
                               "uncertainty (e.g. a perfect separation, or models that agree on every image)")
    return Interval(estimate, float(low), float(high), level, method, n, note="; ".join(notes) or None,
                    details=details)


def _bca_quantiles(estimate: float, boot: np.ndarray, jack: np.ndarray, alpha: float) -> tuple[np.ndarray | None, str]:
    if not np.all(np.isfinite(jack)):
        return None, "a leave-one-out value is undefined"
    below = (np.count_nonzero(boot < estimate) + np.count_nonzero(boot <= estimate)) / (2 * len(boot))
    if not 0 < below < 1:
        return None, "every resample lies on one side of the estimate"
    z0 = stats.norm.ppf(below)
    dev = jack.mean() - jack
    spread = np.sum(dev**2)
    if spread == 0:
        return None, "all leave-one-out values are equal"
    accel = np.sum(dev**3) / (6 * spread**1.5)
    z = stats.norm.ppf([alpha, 1 - alpha])
    adjusted = stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    if not np.all(np.isfinite(adjusted)):
        return None, "the adjusted quantiles are undefined"
    return adjusted, ""


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _scipy_bootstrap(statistic: Callable[..., float], data: tuple[np.ndarray, ...], estimate: float, level: float,
                     n_resamples: int, seed: int, label: str) -> Interval:
    """scipy.stats.bootstrap (paired, BCa) for an arbitrary metric function; percentile where BCa degenerates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate BCa is detected below and recorded instead
        res = stats.bootstrap(data, statistic, n_resamples=n_resamples, paired=True, vectorized=False,
                              confidence_level=level, method="BCa", rng=seed, batch=64)
    boot = np.asarray(res.bootstrap_distribution)
    low, high = res.confidence_interval
    if np.isfinite(low) and np.isfinite(high) and np.all(np.isfinite(boot)):
        return Interval(estimate, float(low), float(high), level, f"BCa {label} (scipy.stats.bootstrap)", len(data[0]),
                        details={"n_resamples": n_resamples, "undefined_resamples": 0})
    interval = _from_distribution(estimate, boot, None, level, label, len(data[0]), {})
    note = "BCa not usable (degenerate or undefined resamples): percentile interval instead"
    return Interval(**{**asdict(interval), "note": "; ".join(filter(None, [interval.note, note]))})


def _bootstrap(metrics: Sequence[str | MetricFn], y: np.ndarray, prob_sets: Sequence[np.ndarray], threshold: float,
               groups: Any, level: float, n_resamples: int, seed: int,
               ranks: Sequence[np.ndarray] | None = None) -> list[Interval]:
    """One interval per metric; with two probability sets, of metric(first) - metric(second) on the same draws."""
    level = _check_level(level)
    if n_resamples < 2:
        raise ValueError("n_resamples must be at least 2")
    n = len(y)
    codes, n_groups = _group_codes(groups, n) if groups is not None else (None, 0)
    paired = len(prob_sets) == 2
    what = "difference, " if paired else ""
    label = (f"cluster bootstrap over {n_groups} groups ({what}{n_resamples} resamples)" if codes is not None
             else f"bootstrap over images ({what}{n_resamples} resamples)")
    details: dict[str, Any] = {"n_groups": n_groups} if codes is not None else {}
    samples = [_Sample(y, p, threshold, rank=None if ranks is None else r)
               for p, r in zip(prob_sets, ranks if ranks is not None else prob_sets)]

    def combine(values: list[np.ndarray]) -> np.ndarray:
        return values[0] - values[1] if paired else values[0]

    results: dict[int, Interval] = {}
    metrics = [_as_function(_metric_name(m)) if isinstance(m, str) and not _vectorised(_metric_name(m)) else m
               for m in metrics]
    named_at = [i for i, m in enumerate(metrics) if isinstance(m, str)]
    named = [_metric_name(metrics[i]) for i in named_at]  # type: ignore[arg-type]
    if named:
        estimates = combine([s.weighted(named, np.ones((1, n)))[0] for s in samples])
        boot = None
        if n and (codes is None or n_groups >= 2):
            boot = _resample(lambda w: combine([s.weighted(named, w) for s in samples]), n, codes, n_groups,
                             n_resamples, seed)
        for j, (i, name) in enumerate(zip(named_at, named)):
            est = float(estimates[j]) if n and np.isfinite(estimates[j]) else None
            method = ("BCa " if codes is None else "percentile ") + label
            if est is None:
                results[i] = Interval(None, None, None, level, method, n, reason=METRICS[name].undefined,
                                      details=details)
            elif boot is None:
                results[i] = Interval(est, None, None, level, method, n, reason="fewer than two groups",
                                      details=details)
            else:
                # The cluster bootstrap stays percentile: BCa would need a group-level jackknife.
                jack = combine([s.jackknife(name) for s in samples]) if codes is None else None
                results[i] = _from_distribution(est, boot[:, j], jack, level, label, n, details)
    for i, metric in enumerate(metrics):
        if not isinstance(metric, str):
            results[i] = _callable_interval(metric, y, prob_sets, codes, n_groups, level, n_resamples, seed, label,
                                            details)
    if codes is not None:
        results = {i: replace(r, n_groups=n_groups, unreliable=n_groups < MIN_GROUPS) for i, r in results.items()}
    return [results[i] for i in range(len(metrics))]


def _callable_interval(metric: MetricFn, y: np.ndarray, prob_sets: Sequence[np.ndarray], codes: np.ndarray | None,
                       n_groups: int, level: float, n_resamples: int, seed: int, label: str,
                       details: dict[str, Any]) -> Interval:
    n = len(y)
    labels = y.astype(np.int64)

    def stat(idx: np.ndarray) -> float:
        values = [_nan(metric(labels[idx], p[idx])) for p in prob_sets]
        return values[0] - values[1] if len(values) == 2 else values[0]

    estimate = stat(np.arange(n)) if n else math.nan
    if not np.isfinite(estimate):
        return Interval(None, None, None, level, label, n, reason="metric undefined on the whole test set")
    if codes is None:
        index = np.arange(n)
        return _scipy_bootstrap(lambda i: stat(i.astype(np.int64)), (index,), float(estimate), level, n_resamples,
                                seed, label)
    if n_groups < 2:
        return Interval(float(estimate), None, None, level, f"percentile {label}", n, reason="fewer than two groups",
                        details=details)
    members = np.arange(n)

    def per_weights(w: np.ndarray) -> np.ndarray:
        return np.array([[stat(np.repeat(members, row.astype(np.int64)))] for row in w])

    boot = _resample(per_weights, n, codes, n_groups, n_resamples, seed)[:, 0]
    return _from_distribution(float(estimate), boot, None, level, label, n, details)


def bootstrap_ci(metric: str | MetricFn, labels: Any, probs: Any, groups: Any = None, level: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0, threshold: float = 0.5) -> Interval:
    """Test-set interval of one metric.

    metric: a registered metric's key (metrics.METRICS; `threshold` applies to the count metrics) or any function
    metric(labels, probs) -> float | None. Without groups: BCa bootstrap over images (labels and probs drawn
    together), percentile where BCa degenerates. With groups (e.g. patient ids): whole groups are drawn with
    replacement and the interval is the percentile one.
    """
    y, p = _binary(labels, probs)
    return _bootstrap([metric], y, [p], threshold, groups, level, n_resamples, seed)[0]


def paired_bootstrap_diff(metric: str | MetricFn, labels: Any, probs_a: Any, probs_b: Any, groups: Any = None,
                          level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                          threshold: float = 0.5) -> Interval:
    """Interval of metric(a) - metric(b) on the same images: both models are scored on each same resample."""
    y, pa, pb = _binary(labels, probs_a, probs_b)
    return _bootstrap([metric], y, [pa, pb], threshold, groups, level, n_resamples, seed)[0]


def _proportion_masks(y: np.ndarray, pred: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(success, denominator) image masks of each registered proportion (interval kind "wilson")."""
    pos = y == 1
    cells = dict(zip(CELLS, (pred & pos, pred & ~pos, ~pred & ~pos, ~pred & pos)))

    def union(names: tuple[str, ...]) -> np.ndarray:
        return np.logical_or.reduce([cells[c] for c in names]) if names else np.zeros(len(y), bool)

    return {key: (union(m.proportion[0]), union(m.proportion[1])) for key, m in METRICS.items()
            if m.interval == "wilson" and m.proportion is not None}


def metric_intervals(labels: Any, probs: Any, threshold: float = 0.5, groups: Any = None, level: float = 0.95,
                     n_resamples: int = 2000, seed: int = 0, scores: Any = None) -> dict[str, Interval]:
    """Intervals of every registered metric with an interval kind (metrics.METRICS), keyed like compute_metrics.

    Independent images (no groups): Wilson for accuracy, sensitivity, specificity, precision and NPV; BCa
    bootstrap for F1, AUROC, AUPRC, Brier and ECE. With groups (images of one patient are alike, so Wilson and the
    image bootstrap come out too narrow): the proportions get `clustered_proportion_interval` (Wilson with the
    design effect, which holds with few groups and stays non-degenerate at 0 and 1); AUROC gets
    `clustered_auroc_interval` (Obuchowski); the rest the percentile cluster bootstrap. Balanced accuracy
    is always the MOVER combination of the sensitivity and specificity intervals (`mover_mean`), so a model that
    calls every image malignant does not get a zero-width [0.5, 0.5].

    Each interval records `n_groups`: the groups in the metric's own denominator (the benign groups for
    specificity, ...), and details["groups"] the groups per class. One group: no interval (None, with the reason).
    scores: what AUROC and AUPRC rank (the logit; see compute_metrics), default the probabilities.
    """
    y, p = _binary(labels, probs)
    ranks = None if scores is None else [_binary(labels, scores)[1]]
    pred = p >= threshold
    masks = _proportion_masks(y, pred)
    boot_names = [k for k, m in METRICS.items() if m.interval in ("bootstrap", "auroc")]
    result: dict[str, Interval] = {}
    if groups is None:
        result.update(zip(boot_names, _bootstrap(boot_names, y, [p], threshold, None, level, n_resamples, seed,
                                                 ranks)))
        for name, (hit, den) in masks.items():
            interval = wilson_interval(int(np.sum(hit & den)), int(den.sum()), level)
            result[name] = replace(interval, reason=METRICS[name].undefined) if not den.any() else interval
    else:
        codes, n_groups = _group_codes(groups, len(y))
        per_class = {"benign": len(np.unique(codes[y == 0])), "malignant": len(np.unique(codes[y == 1]))}
        result.update(zip(boot_names, _bootstrap(boot_names, y, [p], threshold, codes, level, n_resamples, seed,
                                                 ranks)))
        for name, (hit, den) in masks.items():
            interval = clustered_proportion_interval(hit[den], codes[den], level)
            result[name] = replace(interval, reason=METRICS[name].undefined) if not den.any() else interval
        if min(per_class.values()) > 0:
            # Obuchowski's variance covered 95-97 % from 10 to 40 groups where the percentile cluster bootstrap
            # covered 82-93 % (benchmarks/statistics_coverage.py), so it replaces the bootstrap for AUROC.
            for name in (k for k in boot_names if METRICS[k].interval == "auroc"):
                result[name] = clustered_auroc_interval(y, p if ranks is None else ranks[0], codes, level)
        for name in boot_names:
            interval = result[name]
            both = METRICS[name].both_classes
            smallest = min(per_class.values()) if both else n_groups
            if interval.estimate is not None and smallest < 2:
                which = min(per_class, key=per_class.get) if both else "all"
                interval = replace(interval, low=None, high=None,
                                   reason=f"only {smallest} {'' if which == 'all' else which + ' '}group(s): "
                                          "resampling cannot move the number, so there is no interval")
            minimum = MIN_GROUPS_FEW if interval.method.startswith("Obuchowski") else MIN_GROUPS
            result[name] = replace(interval, n_groups=smallest, unreliable=smallest < minimum,
                                   details={**interval.details, "groups": per_class})
        for name in masks:
            result[name] = replace(result[name], details={**result[name].details, "groups": per_class})
    for name, spec in METRICS.items():
        if spec.interval == "mover" and spec.mover is not None:
            result[name] = mover_mean(result[spec.mover[0]], result[spec.mover[1]], level)
            if groups is not None:
                result[name] = replace(result[name], details={**result[name].details, "groups": per_class})
    return {name: _no_zero_width(result[name]) for name, spec in METRICS.items() if spec.interval is not None}


def _no_zero_width(interval: Interval) -> Interval:
    if interval.defined and interval.high - interval.low <= 1e-12:
        return replace(interval, low=None, high=None,
                       reason="the data cannot move this number (zero-width interval), so no interval is given")
    return interval


def clustered_proportion_interval(successes: Any, groups: Any, level: float = 0.95) -> Interval:
    """Wilson interval of a proportion whose trials cluster in groups (images of patients).

    p = sum k_i / sum m_i over the I groups (k_i successes of m_i trials in group i). Its cluster-robust variance is
    v = I / (I - 1) * sum (k_i - p m_i)^2 / n^2 (n = sum m_i), the design effect deff = max(1, v / (p(1 - p) / n))
    and the effective sample size n_eff = n / deff, shrunk further by (z / t_{I-1})^2 for the few-groups degrees
    of freedom (Korn & Graubard 1998, Survey Methodology 24:193-201). The Wilson score interval is then taken on
    (p, n_eff), i.e. statsmodels' proportion_confint(p * n_eff, n_eff, method="wilson"). When p is 0 or 1 the data
    cannot estimate deff, and the worst case is used: n_eff = n^2 / sum m_i^2 (every group counts once when the
    groups are equal in size). So an all-correct result is never the zero-width [1, 1]. One group: no interval.
    """
    level = _check_level(level)
    hit = np.asarray(successes, dtype=np.float64).ravel()
    codes, n_groups = _group_codes(groups, len(hit))
    method = f"Wilson score with the design effect over {n_groups} groups (Korn-Graubard df correction)"
    n = len(hit)
    if n == 0:
        return Interval(None, None, None, level, method, 0, reason="no cases (denominator 0)", n_groups=0,
                        unreliable=True)
    k_i, m_i = np.bincount(codes, weights=hit, minlength=n_groups), np.bincount(codes, minlength=n_groups)
    p = float(hit.sum() / n)
    details: dict[str, Any] = {"successes": int(hit.sum())}
    if n_groups < 2:
        return Interval(p, None, None, level, method, n, n_groups=n_groups, unreliable=True, details=details,
                        reason="one group: resampling it cannot move the number, so there is no interval")
    if 0 < p < 1:
        variance = n_groups / (n_groups - 1) * float(np.sum((k_i - p * m_i) ** 2)) / n**2
        deff = max(1.0, variance / (p * (1 - p) / n))
        n_eff = n / deff
    else:
        n_eff = n**2 / float(np.sum(m_i.astype(np.float64) ** 2))
        deff = n / n_eff
        details["deff_note"] = "p is 0 or 1: design effect of perfectly alike images in a group (worst case)"
    z = float(stats.norm.ppf((1 + level) / 2))
    n_eff *= (z / float(stats.t.ppf((1 + level) / 2, n_groups - 1))) ** 2
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    details.update(design_effect=deff, n_effective=n_eff)
    low, high = (0.0 if p == 0 else max(0.0, centre - half)), (1.0 if p == 1 else min(1.0, centre + half))
    return Interval(p, low, high, level, method, n, details=details,
                    n_groups=n_groups, unreliable=n_groups < MIN_GROUPS_FEW)


def mover_mean(first: Interval, second: Interval, level: float = 0.95) -> Interval:
    """Interval of (a + b) / 2 from the intervals of two independent estimates (balanced accuracy from sensitivity
    and specificity): Newcombe's MOVER, L = m - sqrt((a - l_a)^2 + (b - l_b)^2) / 2, U = m + sqrt((u_a - a)^2 +
    (u_b - b)^2) / 2 (Zou & Donner 2008). It inherits the components' boundedness and is never of zero width when
    either component is not."""
    method = f"MOVER (Newcombe) of the intervals of sensitivity ({first.method}) and specificity ({second.method})"
    groups = [g for g in (first.n_groups, second.n_groups) if g is not None]
    common = {"n_groups": min(groups) if groups else None, "unreliable": first.unreliable or second.unreliable}
    n = first.n + second.n
    if first.estimate is None or second.estimate is None:
        return Interval(None, None, None, level, method, n, reason=METRICS["balanced_accuracy"].undefined, **common)
    mean = (first.estimate + second.estimate) / 2
    if not (first.defined and second.defined):
        why = first.reason if not first.defined else second.reason
        return Interval(mean, None, None, level, method, n, reason=f"a component has no interval ({why})", **common)
    low = mean - math.hypot(first.estimate - first.low, second.estimate - second.low) / 2
    high = mean + math.hypot(first.high - first.estimate, second.high - second.estimate) / 2
    return Interval(mean, max(0.0, low), min(1.0, high), level, method, n, **common)


def _obuchowski(y: np.ndarray, prob_sets: Sequence[np.ndarray], codes: np.ndarray,
                n_groups: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """AUROCs and their covariance matrix from cluster-level structural components (Obuchowski 1997, Biometrics
    53:567-578). For each model, V10(x) is the share of all negatives a positive image beats and V01(y) the share
    of all positives above a negative one (ties half); X_i and Y_i sum them over group i, which holds m_i positive
    and n_i negative images (M, N in all; I10, I01 groups with any positive / negative image; I groups):
        S10 = I10 / ((I10 - 1) M) sum_i (X_i - m_i A)(X_i - m_i A')
        S01 = I01 / ((I01 - 1) N) sum_i (Y_i - n_i A)(Y_i - n_i A')
        S11 = I / (I - 1) sum_i (X_i - m_i A)(Y_i - n_i A')
        cov(A, A') = S10 / M + S01 / N + (S11 + S11') / (M N).
    With one image per group this is exactly DeLong et al. (1988) (S11 = 0, I10 = M, I01 = N)."""
    pos, neg = y == 1, y == 0
    big_m, big_n = int(pos.sum()), int(neg.sum())
    m_i, n_i = np.bincount(codes[pos], minlength=n_groups), np.bincount(codes[neg], minlength=n_groups)
    i10, i01 = int(np.sum(m_i > 0)), int(np.sum(n_i > 0))
    d10, d01, aucs = [], [], []
    for p in prob_sets:
        ranks = stats.rankdata(p)
        v10 = (ranks[pos] - stats.rankdata(p[pos])) / big_n
        v01 = 1 - (ranks[neg] - stats.rankdata(p[neg])) / big_m
        auc = float(v10.mean())
        aucs.append(auc)
        d10.append(np.bincount(codes[pos], weights=v10, minlength=n_groups) - m_i * auc)
        d01.append(np.bincount(codes[neg], weights=v01, minlength=n_groups) - n_i * auc)
    a10, a01 = np.array(d10), np.array(d01)
    s10 = i10 / ((i10 - 1) * big_m) * (a10 @ a10.T)
    s01 = i01 / ((i01 - 1) * big_n) * (a01 @ a01.T)
    s11 = n_groups / (n_groups - 1) * (a10 @ a01.T)
    cov = s10 / big_m + s01 / big_n + (s11 + s11.T) / (big_m * big_n)
    return np.array(aucs), cov, {"n_groups": n_groups, "groups_malignant": i10, "groups_benign": i01}


def clustered_auroc_interval(labels: Any, probs: Any, groups: Any, level: float = 0.95) -> Interval:
    """AUROC with Obuchowski's (1997) clustered variance, on the logit scale (so inside (0, 1)) with a Student-t
    quantile of min(I10, I01) - 1 degrees of freedom for few groups; see `_obuchowski` for the formulas."""
    level = _check_level(level)
    y, p = _binary(labels, probs)
    codes, n_groups = _group_codes(groups, len(y))
    method = f"Obuchowski clustered AUROC variance over {n_groups} groups, logit scale, t quantile"
    i10, i01 = len(np.unique(codes[y == 1])), len(np.unique(codes[y == 0]))
    common = {"n_groups": min(i10, i01), "unreliable": min(i10, i01) < MIN_GROUPS_FEW,
              "details": {"groups": {"benign": i01, "malignant": i10}}}
    if i10 == 0 or i01 == 0:
        return Interval(None, None, None, level, method, len(y), reason=METRICS["auroc"].undefined, **common)
    if min(i10, i01) < 2:
        auc = float(_Sample(y, p, 0.5)._ranking("auroc", np.ones((1, len(y))))[0])
        return Interval(auc, None, None, level, method, len(y), **common,
                        reason="only one benign or one malignant group: no spread to estimate an interval from")
    aucs, cov, _ = _obuchowski(y, [p], codes, n_groups)
    auc = float(aucs[0])
    if not 0 < auc < 1:
        return Interval(auc, None, None, level, method, len(y), **common,
                        reason="a perfect (or perfectly wrong) separation: the variance estimate is 0, so no interval")
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    if se <= 1e-12:
        return Interval(auc, None, None, level, method, len(y), **common,
                        reason="zero variance estimate (e.g. every image has the same score), so no interval")
    q = float(stats.t.ppf((1 + level) / 2, min(i10, i01) - 1))
    centre, scale = math.log(auc / (1 - auc)), se / (auc * (1 - auc))
    low, high = (1 / (1 + math.exp(-(centre + s * q * scale))) for s in (-1, 1))
    return replace(Interval(auc, low, high, level, method, len(y), **common),
                   details={**common["details"], "se": se, "df": min(i10, i01) - 1})


def clustered_delong_test(labels: Any, probs_a: Any, probs_b: Any, groups: Any,
                          level: float = 0.95) -> HypothesisResult:
    """DeLong's test of two correlated AUROCs when images cluster in groups (patients): Obuchowski's (1997)
    cluster-level structural components (formulas in `_obuchowski`). z = (A_a - A_b) / sqrt(var_a + var_b -
    2 cov_ab), two-sided normal p, Wald interval. With one image per group it equals `delong_test` exactly."""
    level = _check_level(level)
    y, pa, pb = _binary(labels, probs_a, probs_b)
    codes, n_groups = _group_codes(groups, len(y))
    method = "clustered DeLong test (Obuchowski 1997, cluster-level structural components)"
    i10, i01 = len(np.unique(codes[y == 1])), len(np.unique(codes[y == 0]))
    details: dict[str, Any] = {"n_groups": n_groups, "groups_malignant": i10, "groups_benign": i01}
    if i10 < 2 or i01 < 2:
        return HypothesisResult(None, None, method, len(y), details=details,
                                reason="needs at least two groups with malignant and two with benign images")
    aucs, cov, _ = _obuchowski(y, [pa, pb], codes, n_groups)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    details.update(auc_a=float(aucs[0]), auc_b=float(aucs[1]), se=se)
    if se <= 1e-12 * max(1.0, math.sqrt(abs(cov[0, 0]) + abs(cov[1, 1]))):
        reason = ("the two models rank the images identically (or both perfectly): difference 0" if abs(diff) < 1e-12
                  else "zero variance of the difference: the test is undefined")
        p = 1.0 if abs(diff) < 1e-12 else None
        interval = Interval(diff, None, None, level, "clustered DeLong (Wald)", len(y), reason=reason,
                            n_groups=n_groups, unreliable=min(i10, i01) < MIN_GROUPS)
        return HypothesisResult(0.0 if p else None, p, method, len(y), interval, reason=reason, details=details)
    z = diff / se
    q = float(stats.norm.ppf((1 + level) / 2))
    interval = Interval(diff, diff - q * se, diff + q * se, level, "clustered DeLong (Wald)", len(y),
                        details={"se": se}, n_groups=n_groups, unreliable=min(i10, i01) < MIN_GROUPS)
    return HypothesisResult(float(z), float(2 * stats.norm.sf(abs(z))), method, len(y), interval, details=details)


def clustered_mcnemar_test(correct_a: Any, correct_b: Any, groups: Any) -> HypothesisResult:
    """McNemar's test for paired accuracies when images cluster in groups: Durkalski, Palesch, Lipsitz & Rust
    (2003, Statistics in Medicine 22:2417-2428). With d_k = b_k - c_k the discordant counts of group k (only A
    right minus only B right), X^2 = (sum_k d_k)^2 / sum_k d_k^2, chi-square with 1 df. With one image per group
    it is McNemar's chi-square without continuity correction, (b - c)^2 / (b + c), exactly."""
    a = np.asarray(correct_a).ravel().astype(bool)
    b = np.asarray(correct_b).ravel().astype(bool)
    if len(a) != len(b):
        raise ValueError(f"correct_a and correct_b differ in length: {len(a)} vs {len(b)}")
    codes, n_groups = _group_codes(groups, len(a))
    d = np.bincount(codes, weights=(a & ~b).astype(float) - (~a & b).astype(float), minlength=n_groups)
    method = "clustered McNemar (Durkalski et al. 2003), chi-square 1 df"
    details = {"n_groups": n_groups, "groups_with_discordance": int(np.sum(d != 0)),
               "only_a_correct": int(np.sum(a & ~b)), "only_b_correct": int(np.sum(~a & b)),
               "accuracy_difference": float(a.mean() - b.mean()) if len(a) else None}
    denominator = float(np.sum(d**2))
    if denominator == 0:
        return HypothesisResult(0.0, 1.0, method, len(a), details=details,
                                reason="in every group as many images only A gets right as only B: no "
                                       "evidence of a difference")
    chi2 = float(d.sum() ** 2 / denominator)
    return HypothesisResult(chi2, float(stats.chi2.sf(chi2, 1)), method, len(a), details=details)


def delong_test(labels: Any, probs_a: Any, probs_b: Any, level: float = 0.95) -> HypothesisResult:
    """DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUROCs on the same images.

    Fast midrank form (Sun & Xu 2014), O(n log n). Difference = AUROC(a) - AUROC(b), with its standard error,
    z, two-sided p and a Wald interval.
    """
    level = _check_level(level)
    y, pa, pb = _binary(labels, probs_a, probs_b)
    pos, neg = y == 1, y == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    method = "DeLong test for correlated AUROCs (midrank algorithm, Sun & Xu 2014)"
    details: dict[str, Any] = {"n_pos": n_pos, "n_neg": n_neg}
    if n_pos < 2 or n_neg < 2:
        return HypothesisResult(None, None, method, len(y), reason="needs at least two images of each class",
                                details=details)
    v10, v01 = np.empty((2, n_pos)), np.empty((2, n_neg))
    for k, p in enumerate((pa, pb)):
        x, z = p[pos], p[neg]
        ranks = stats.rankdata(np.concatenate([x, z]))
        v10[k] = (ranks[:n_pos] - stats.rankdata(x)) / n_neg  # share of negatives below each positive
        v01[k] = 1 - (ranks[n_pos:] - stats.rankdata(z)) / n_pos  # share of positives above each negative
    aucs = v10.mean(1)
    cov = np.cov(v10) / n_pos + np.cov(v01) / n_neg
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    details.update(auc_a=float(aucs[0]), auc_b=float(aucs[1]), se_auc_a=math.sqrt(max(cov[0, 0], 0.0)),
                   se_auc_b=math.sqrt(max(cov[1, 1], 0.0)))
    se = math.sqrt(max(var, 0.0))
    details["se"] = se
    # Relative guard: identical score vectors leave rounding noise of ~1e-17 in var.
    if se <= 1e-12 * max(1.0, math.sqrt(abs(cov[0, 0]) + abs(cov[1, 1]))):
        reason = ("the two models rank the images identically (or both perfectly): difference 0" if abs(diff) < 1e-12
                  else "zero variance of the difference: the test is undefined")
        interval = Interval(diff, None, None, level, "DeLong (Wald)", len(y), reason=reason)
        p = 1.0 if abs(diff) < 1e-12 else None
        return HypothesisResult(0.0 if p else None, p, method, len(y), interval, reason=reason, details=details)
    z = diff / se
    q = float(stats.norm.ppf((1 + level) / 2))
    interval = Interval(diff, diff - q * se, diff + q * se, level, "DeLong (Wald)", len(y), details={"se": se})
    return HypothesisResult(float(z), float(2 * stats.norm.sf(abs(z))), method, len(y), interval, details=details)


def mcnemar_test(correct_a: Any, correct_b: Any, exact_below: int = 25) -> HypothesisResult:
    """McNemar's test of two classifiers' accuracies on the same images (per-image correct / wrong).

    Exact two-sided binomial test when fewer than `exact_below` images are discordant; otherwise the chi-square
    statistic with continuity correction, (|b - c| - 1)^2 / (b + c), the bracket floored at 0.
    """
    a = np.asarray(correct_a).ravel().astype(bool)
    b = np.asarray(correct_b).ravel().astype(bool)
    if len(a) != len(b):
        raise ValueError(f"correct_a and correct_b differ in length: {len(a)} vs {len(b)}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    details = {"only_a_correct": only_a, "only_b_correct": only_b, "both_correct": int(np.sum(a & b)),
               "both_wrong": int(np.sum(~a & ~b)),
               "accuracy_difference": float(a.mean() - b.mean()) if len(a) else None}
    if discordant == 0:
        return HypothesisResult(0.0, 1.0, "McNemar", len(a), reason="no discordant images: the models agree on each",
                                details=details)
    if discordant < exact_below:
        k = min(only_a, only_b)
        p = min(1.0, 2 * float(stats.binom.cdf(k, discordant, 0.5)))
        return HypothesisResult(float(k), p, "McNemar exact (two-sided binomial on discordant pairs)", len(a),
                                details=details)
    chi2 = max(abs(only_a - only_b) - 1, 0) ** 2 / discordant
    return HypothesisResult(float(chi2), float(stats.chi2.sf(chi2, 1)),
                            "McNemar chi-square (1 df) with continuity correction", len(a), details=details)
