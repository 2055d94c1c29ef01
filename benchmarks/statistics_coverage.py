"""Coverage of the fold-level and test-set intervals by simulation, and timings of the statistics code.

    python benchmarks/statistics_coverage.py [--quick]

Prints Markdown tables and writes docs/statistics_bench.json. Fixed seeds; about 5 CPU-minutes on one core (25 minutes
of wall time on a shared 2-core machine under load).

Sections: fold-level coverage (Student t, Nadeau-Bengio), test-set coverage (independent and clustered images),
type-I error of the comparison tests under a null with patient effects (image-level and clustered DeLong and
McNemar, the clustered paired bootstrap), coverage with 3-40 groups and for proportions near 0 and 1, bounded fold
intervals (raw, clipped and logit t), timings. Each rate is a mean over replicates: its Monte-Carlo standard error
is sqrt(rate (1 - rate) / replicates), printed with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from scipy import stats
from scipy.special import expit

from bcc_lightning.reports import statistics as S
from bcc_lightning.reports.metrics import compute_metrics
from bcc_lightning.reports.operating_point import choose_threshold


def old_choose_threshold(labels: np.ndarray, probs: np.ndarray, method: str) -> float:
    """The search this project used before (every metric at every distinct score: O(n^2)), kept here only to time it."""
    best, best_score = 0.5, -np.inf
    for t in np.unique(probs):
        m = compute_metrics(labels, probs, float(t))
        score = m["recall"] + m["specificity"] - 1 if method == "youden" else m["f1"]
        if score > best_score + 1e-12:
            best, best_score = float(t), score
    return best

REPO = Path(__file__).resolve().parent.parent

FOLDS = 5
N_TEST_FOLD, N_TRAIN_FOLD = 400, 1600  # 2,000 images in 5 folds


def old_fold_bootstrap(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The fold aggregation's old interval (aggregate.bootstrap_ci, copied because it is being replaced):
    95 % percentile bootstrap of the mean of the fold scores."""
    data = np.asarray(values, dtype=float)
    means = data[np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def covered(low: float | None, high: float | None, truth: float) -> bool:
    return low is not None and high is not None and low <= truth <= high


def fold_intervals(scores: np.ndarray, truth: float) -> dict[str, bool]:
    old = old_fold_bootstrap(list(scores))
    t = S.t_interval(scores)
    nb = S.corrected_t_interval(scores, N_TRAIN_FOLD, N_TEST_FOLD)
    return {"old percentile bootstrap of the mean": covered(*old, truth), "Student t": covered(t.low, t.high, truth),
            "Nadeau-Bengio corrected t": covered(nb.low, nb.high, truth)}


def simulate_folds(design: str, sets: int, rng: np.random.Generator) -> tuple[dict[str, float], float]:
    """Coverage of the three fold-level intervals of the mean accuracy over 5 folds."""
    mu, sd_model = 0.85, 0.01
    binomial_var = mu * (1 - mu) / N_TEST_FOLD
    rho = N_TEST_FOLD / (N_TEST_FOLD + N_TRAIN_FOLD)  # Nadeau-Bengio's heuristic correlation, 0.2 for 5 folds
    hits: dict[str, list[bool]] = {}
    for _ in range(sets):
        if design == "iid":
            p = mu + rng.normal(0, sd_model, FOLDS)
        else:  # a component shared by all folds (overlapping training sets) giving fold-score correlation rho
            shared = rng.normal(0, np.sqrt(rho / (1 - rho) * (sd_model**2 + binomial_var)))
            p = mu + shared + rng.normal(0, sd_model, FOLDS)
        scores = rng.binomial(N_TEST_FOLD, np.clip(p, 0, 1)) / N_TEST_FOLD
        for k, v in fold_intervals(scores, mu).items():
            hits.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in hits.items()}, mu


def centroid_accuracy(w: np.ndarray, b: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """True accuracy of rules x.w + b > 0 for classes N(0, I) and N(delta, I), equal priors."""
    norm = np.linalg.norm(w, axis=-1)
    return 0.5 * (stats.norm.cdf((w @ delta + b) / norm) + stats.norm.cdf(-b / norm))


def simulate_cv(sets: int, rng: np.random.Generator) -> tuple[dict[str, float], float, float]:
    """Real 5-fold cross-validation of a nearest-centroid classifier on 2,000 Gaussian images (10 features).

    Target: the expected accuracy of the classifier trained on 1,600 images (what a 5-fold mean estimates).
    Returns coverage, the target and the observed correlation between fold scores."""
    d, n = 10, N_TEST_FOLD + N_TRAIN_FOLD
    delta = np.full(d, 0.54)  # Bayes accuracy about 0.80

    def train(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m1 = (x * y[..., None]).sum(-2) / y.sum(-1, keepdims=True)
        m0 = (x * (1 - y)[..., None]).sum(-2) / (1 - y).sum(-1, keepdims=True)
        return m1 - m0, -0.5 * ((m1**2).sum(-1) - (m0**2).sum(-1))

    # Target by Monte Carlo over independent training sets of the fold's size: the sample means of each class
    # are all a nearest-centroid rule depends on, so draw them directly.
    truth_draws = []
    for _ in range(20):
        n1 = rng.binomial(N_TRAIN_FOLD, 0.5, 2000)
        m1 = delta + rng.normal(0, 1, (2000, d)) / np.sqrt(n1)[:, None]
        m0 = rng.normal(0, 1, (2000, d)) / np.sqrt(N_TRAIN_FOLD - n1)[:, None]
        truth_draws.append(centroid_accuracy(m1 - m0, -0.5 * ((m1**2).sum(-1) - (m0**2).sum(-1)), delta))
    truth = float(np.mean(np.concatenate(truth_draws)))
    hits: dict[str, list[bool]] = {}
    all_scores = []
    for _ in range(sets):
        y = rng.integers(0, 2, n).astype(float)
        x = rng.normal(0, 1, (n, d)) + y[:, None] * delta
        fold = rng.permutation(n) % FOLDS
        scores = np.empty(FOLDS)
        for k in range(FOLDS):
            tr, te = fold != k, fold == k
            w, b = train(x[tr], y[tr])
            scores[k] = np.mean(((x[te] @ w + b) > 0) == (y[te] == 1))
        all_scores.append(scores)
        for key, v in fold_intervals(scores, truth).items():
            hits.setdefault(key, []).append(v)
    matrix = np.array(all_scores)
    # Intraclass correlation: the within-set spread estimates (1 - rho) times the total variance.
    rho = float(1 - matrix.var(ddof=1, axis=1).mean() / matrix.var(ddof=1))
    return {k: float(np.mean(v)) for k, v in hits.items()}, truth, rho


def simulate_test_sets(sims: int, rng: np.random.Generator, resamples: int) -> dict[str, dict[str, float]]:
    """Coverage on one test set: independent images, and images clustered in patients (label per patient)."""
    separation, cut, prevalence = 1.5, 0.75, 0.4
    true_acc = prevalence * stats.norm.sf(cut - separation) + (1 - prevalence) * stats.norm.cdf(cut)
    true_auc = stats.norm.cdf(separation / np.sqrt(2))
    out: dict[str, dict[str, list[bool]]] = {"independent (500 images)": {}, "40 patients x 12 images": {}}
    for s in range(sims):
        for design, rows in out.items():
            if design.startswith("independent"):
                y = (rng.random(500) < prevalence).astype(int)
                score = separation * y + rng.normal(0, 1, 500)
                groups = None
            else:  # patient effect 0.6^2 + image noise 0.8^2 = unit variance, so the same truths hold
                patient_y = (rng.random(40) < prevalence).astype(int)
                groups = np.repeat(np.arange(40), 12)
                y = patient_y[groups]
                score = separation * y + rng.normal(0, 0.6, 40)[groups] + rng.normal(0, 0.8, 480)
            if y.min() == y.max():
                continue
            probs = expit(score - cut)  # prob >= 0.5 exactly when score >= cut
            correct = int(np.sum((probs >= 0.5) == (y == 1)))
            wil = S.wilson_interval(correct, len(y))
            rows.setdefault("accuracy: Wilson", []).append(covered(wil.low, wil.high, true_acc))
            for metric, truth in (("accuracy", true_acc), ("auroc", true_auc)):
                boot = S.bootstrap_ci(metric, y, probs, n_resamples=resamples, seed=s)
                rows.setdefault(f"{metric}: BCa bootstrap over images", []).append(
                    covered(boot.low, boot.high, truth))
                if groups is not None:
                    clus = S.bootstrap_ci(metric, y, probs, groups=groups, n_resamples=resamples, seed=s)
                    rows.setdefault(f"{metric}: cluster bootstrap over patients", []).append(
                        covered(clus.low, clus.high, truth))
    return {d: {k: float(np.mean(v)) for k, v in rows.items()} for d, rows in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# Clustered data: comparison tests under the null, few groups, proportions near 0 and 1, bounded fold intervals
# ---------------------------------------------------------------------------------------------------------------

SEPARATION, CUT, PATIENT_SD, IMAGE_SD = 1.5, 0.75, 0.6, 0.8  # patient 0.6^2 + image 0.8^2 = unit variance


def null_comparison(reps: int, rng: np.random.Generator, resamples: int) -> dict[str, float]:
    """Two equally good models with patient effects of their own (40 patients x 12 images, labels per patient):
    the share of 5 % tests that reject. The models share a patient component too, so they are correlated."""
    patients, per = 40, 12
    groups = np.repeat(np.arange(patients), per)
    rejected: dict[str, list[bool]] = {}
    for s in range(reps):
        y = (rng.random(patients) < 0.4).astype(int)[groups]
        if y.min() == y.max():
            continue
        shared = rng.normal(0, 0.4, patients)[groups]
        scores = [SEPARATION * y + shared + rng.normal(0, 0.45, patients)[groups] + rng.normal(0, IMAGE_SD, len(y))
                  for _ in range(2)]
        a, b = (expit(v - CUT) for v in scores)
        ca, cb = (a >= 0.5) == (y == 1), (b >= 0.5) == (y == 1)
        tests = {"DeLong (images independent)": S.delong_test(y, a, b),
                 "clustered DeLong (Obuchowski 1997)": S.clustered_delong_test(y, a, b, groups),
                 "McNemar (images independent)": S.mcnemar_test(ca, cb),
                 "clustered McNemar (Durkalski 2003)": S.clustered_mcnemar_test(ca, cb, groups)}
        for name, res in tests.items():
            rejected.setdefault(name, []).append(res.p_value is not None and res.p_value < 0.05)
        for metric in ("auroc", "accuracy"):
            diff = S.paired_bootstrap_diff(metric, y, a, b, groups=groups, n_resamples=resamples, seed=s)
            rejected.setdefault(f"paired cluster bootstrap, {metric} (0 outside the 95 % interval)", []).append(
                diff.defined and not diff.low <= 0 <= diff.high)
    return {k: float(np.mean(v)) for k, v in rejected.items()} | {"replicates": len(rejected[next(iter(rejected))])}


def few_groups(reps: int, rng: np.random.Generator, resamples: int) -> dict[str, dict[str, Any]]:
    """Coverage with 3-40 patients of 12 images (malignant and benign patients alternate): the percentile cluster
    bootstrap against the few-cluster methods (design-effect Wilson with Korn-Graubard df; Obuchowski logit t)."""
    per = 12
    sens, spec = stats.norm.sf(CUT - SEPARATION), stats.norm.cdf(CUT)
    true_auc = stats.norm.cdf(SEPARATION / np.sqrt(2))
    out: dict[str, dict[str, Any]] = {}
    for n_groups in (3, 5, 10, 20, 40):
        groups = np.repeat(np.arange(n_groups), per)
        y = (np.arange(n_groups) % 2 == 0).astype(int)[groups]  # 3 groups: 2 malignant, 1 benign
        prevalence = y.mean()
        truth = {"accuracy": prevalence * sens + (1 - prevalence) * spec, "sensitivity": sens, "auroc": true_auc}
        hits: dict[str, list[bool]] = {}
        defined: dict[str, list[bool]] = {}
        for s in range(reps):
            score = SEPARATION * y + rng.normal(0, PATIENT_SD, n_groups)[groups] + rng.normal(0, IMAGE_SD, len(y))
            p = expit(score - CUT)
            pred = p >= 0.5
            malignant = y == 1
            rows = {
                "accuracy: percentile cluster bootstrap": S.bootstrap_ci("accuracy", y, p, groups,
                                                                         n_resamples=resamples, seed=s),
                "accuracy: design-effect Wilson (Korn-Graubard)": S.clustered_proportion_interval(pred == malignant,
                                                                                                   groups),
                "sensitivity: percentile cluster bootstrap": S.bootstrap_ci("sensitivity", y, p, groups,
                                                                            n_resamples=resamples, seed=s),
                "sensitivity: design-effect Wilson (Korn-Graubard)": S.clustered_proportion_interval(
                    pred[malignant], groups[malignant]),
                "auroc: percentile cluster bootstrap": S.bootstrap_ci("auroc", y, p, groups, n_resamples=resamples,
                                                                      seed=s),
                "auroc: Obuchowski, logit t": S.clustered_auroc_interval(y, p, groups),
            }
            for name, ci in rows.items():
                metric = name.split(":")[0]
                defined.setdefault(name, []).append(ci.defined)
                if ci.defined:
                    hits.setdefault(name, []).append(covered(ci.low, ci.high, truth[metric]))
        out[f"{n_groups} groups"] = {name: {"coverage": float(np.mean(hits[name])) if hits.get(name) else None,
                                            "defined": float(np.mean(v))} for name, v in defined.items()}
    return out


def extreme_proportions(reps: int, rng: np.random.Generator, resamples: int) -> dict[str, dict[str, Any]]:
    """Coverage of sensitivity near 0 and 1: independent images (Wilson) and 20 / 40 malignant patients x 12 images
    (percentile cluster bootstrap against the design-effect Wilson)."""
    out: dict[str, dict[str, Any]] = {}
    for truth in (0.02, 0.98):
        cut = SEPARATION - stats.norm.ppf(truth)  # P(score >= cut | malignant) = truth
        rows: dict[str, list[bool]] = {}
        for s in range(reps):
            score = SEPARATION + rng.normal(0, 1, 240)
            k = int(np.sum(score >= cut))
            w = S.wilson_interval(k, 240)
            rows.setdefault("240 independent images: Wilson", []).append(covered(w.low, w.high, truth))
            for patients in (20, 40):
                groups = np.repeat(np.arange(patients), 240 // patients)
                score = SEPARATION + rng.normal(0, PATIENT_SD, patients)[groups] + rng.normal(0, IMAGE_SD, 240)
                y = np.r_[np.ones(240, int), np.zeros(2, int)]  # two benign images so the sample has both classes
                p = expit(np.r_[score, -5.0, -5.0] - cut)
                g = np.r_[groups, patients, patients + 1]
                boot = S.bootstrap_ci("sensitivity", y, p, g, n_resamples=resamples, seed=s)
                dew = S.clustered_proportion_interval(score >= cut, groups)
                rows.setdefault(f"{patients} patients x {240 // patients} images: percentile cluster bootstrap",
                                []).append(covered(boot.low, boot.high, truth))
                rows.setdefault(f"{patients} patients x {240 // patients} images: design-effect Wilson",
                                []).append(covered(dew.low, dew.high, truth))
        out[f"sensitivity {truth}"] = {k: float(np.mean(v)) for k, v in rows.items()}
    return out


def bounded_folds(reps: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Fold-level intervals of a mean accuracy near 1: how often the raw t interval leaves [0, 1], and coverage of
    the raw, clipped and logit-scale t intervals (independent folds, binomial test folds)."""
    out: dict[str, dict[str, float]] = {}
    for folds, n_test, truth in ((3, 40, 0.95), (5, 40, 0.95), (5, 100, 0.98), (5, 400, 0.85)):
        rows: dict[str, list[bool]] = {}
        for _ in range(reps):
            values = rng.binomial(n_test, np.clip(truth + rng.normal(0, 0.01, folds), 0, 1)) / n_test
            raw, clipped = S.t_interval(values), S.t_interval(values, bounds=(0.0, 1.0))
            logit = S.logit_t_interval(values, n_test)
            rows.setdefault("raw t leaves [0, 1]", []).append(raw.defined and (raw.low < 0 or raw.high > 1))
            rows.setdefault("no interval (all folds equal)", []).append(not clipped.defined)
            rows.setdefault("raw t coverage", []).append(covered(raw.low, raw.high, truth))
            rows.setdefault("clipped t coverage", []).append(covered(clipped.low, clipped.high, truth))
            rows.setdefault("logit t coverage", []).append(covered(logit.low, logit.high, truth))
        out[f"{folds} folds x {n_test} images, accuracy {truth}"] = {k: float(np.mean(v)) for k, v in rows.items()}
    return out


def mc_error(rate: float, reps: int) -> float:
    return float(np.sqrt(rate * (1 - rate) / max(reps, 1)))


def timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def timings(rng: np.random.Generator) -> dict[str, float]:
    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return y, np.round(expit(1.2 * (2 * y - 1) + rng.normal(0, 1.2, n)), 4)

    out = {}
    for n in (10_000, 1_000_000):
        y, p = data(n)
        for method in ("youden", "sensitivity@0.95"):
            out[f"choose_threshold {method}, {n:,} probs"] = timed(lambda y=y, p=p, m=method: choose_threshold(y, p, m))
    y, p = data(4_000)
    out["old brute-force choose_threshold youden, 4,000 probs"] = timed(lambda: old_choose_threshold(y, p, "youden"), 1)
    out["new choose_threshold youden, same 4,000 probs"] = timed(lambda: choose_threshold(y, p, "youden"))
    y, a = data(10_000)
    b = np.clip(a + rng.normal(0, 0.05, len(a)), 0, 1)
    out["delong_test, 10,000 images"] = timed(lambda: S.delong_test(y, a, b))
    out["mcnemar_test, 10,000 images"] = timed(lambda: S.mcnemar_test((a >= 0.5) == y, (b >= 0.5) == y))
    out["paired_bootstrap_diff auroc, 10,000 images x 2,000"] = timed(
        lambda: S.paired_bootstrap_diff("auroc", y, a, b, n_resamples=2000), 1)
    out["bootstrap_ci auroc (BCa), 10,000 images x 2,000"] = timed(
        lambda: S.bootstrap_ci("auroc", y, a, n_resamples=2000), 1)
    out["bootstrap_ci auroc (cluster, 400 groups), 10,000 x 2,000"] = timed(
        lambda: S.bootstrap_ci("auroc", y, a, groups=np.arange(10_000) // 25, n_resamples=2000), 1)
    out["metric_intervals (all 11 metrics), 10,000 images x 2,000"] = timed(
        lambda: S.metric_intervals(y, a, n_resamples=2000), 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulations (a smoke run; not for the docs)")
    parser.add_argument("--out", default=str(REPO / "docs" / "statistics_bench.json"))
    args = parser.parse_args()
    fold_sets, test_sims, resamples = (200, 50, 500) if args.quick else (2000, 500, 1000)
    null_reps, group_reps, extreme_reps = (100, 40, 40) if args.quick else (1000, 400, 400)
    start = time.perf_counter()
    rng = np.random.default_rng(20240601)
    folds: dict[str, Any] = {}
    for design, label in (("iid", "i.i.d. fold scores"), ("shared", "fold scores correlated 0.2")):
        cov, truth = simulate_folds(design, fold_sets, rng)
        folds[label] = {"coverage": cov, "truth": truth}
    cov, truth, rho = simulate_cv(fold_sets, rng)
    folds["5-fold CV of a nearest-centroid classifier"] = {"coverage": cov, "truth": truth,
                                                           "observed_fold_correlation": rho}
    test_cov = simulate_test_sets(test_sims, rng, resamples)
    null = null_comparison(null_reps, rng, 500)
    groups = few_groups(group_reps, rng, 500)
    extreme = extreme_proportions(extreme_reps, rng, 500)
    bounded = bounded_folds(fold_sets, rng)
    times = timings(rng)
    elapsed = time.perf_counter() - start

    lines = [f"## Fold-level 95 % intervals of the mean accuracy over 5 folds ({fold_sets:,} simulated sets)", "",
             "| design | old percentile bootstrap | Student t | Nadeau-Bengio corrected t |", "|---|---|---|---|"]
    for label, row in folds.items():
        c = row["coverage"]
        lines.append(f"| {label} | {c['old percentile bootstrap of the mean']:.1%} | {c['Student t']:.1%} | "
                     f"{c['Nadeau-Bengio corrected t']:.1%} |")
    lines += ["", f"## Test-set 95 % intervals ({test_sims} simulated test sets, {resamples} resamples)", "",
              "| design | interval | coverage |", "|---|---|---|"]
    for design, rows in test_cov.items():
        lines += [f"| {design} | {k} | {v:.1%} |" for k, v in rows.items()]
    reps = int(null["replicates"])
    lines += ["", f"## Type-I error at the 5 % level, no true difference (40 patients x 12 images, patient effects "
              f"of each model; {reps} replicates, Monte-Carlo SE {mc_error(0.05, reps):.1%} at 5 %)", "",
              "| test | rejects |", "|---|---|"]
    lines += [f"| {k} | {v:.1%} |" for k, v in null.items() if k != "replicates"]
    lines += ["", f"## 95 % intervals with few groups (patients x 12 images, {group_reps} replicates: Monte-Carlo SE "
              f"{mc_error(0.95, group_reps):.1%} at 95 %; 'defined' = share of samples that gave an interval)", "",
              "| interval | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for name in next(iter(groups.values())):
        cells = []
        for row in groups.values():
            c = row[name]
            cells.append("–" if c["coverage"] is None else f"{c['coverage']:.1%}"
                         + ("" if c["defined"] == 1 else f" ({c['defined']:.0%} defined)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"## Proportions near 0 and 1 ({extreme_reps} replicates, Monte-Carlo SE "
              f"{mc_error(0.95, extreme_reps):.1%})", "", "| truth | interval | coverage |", "|---|---|---|"]
    for truth, rows in extreme.items():
        lines += [f"| {truth} | {k} | {v:.1%} |" for k, v in rows.items()]
    lines += ["", f"## Fold intervals of a bounded metric ({fold_sets:,} simulated sweeps each)", "",
              "| design | raw t leaves [0, 1] | no interval (all equal) | raw t | clipped t | logit t |",
              "|---|---|---|---|---|---|"]
    for design, r in bounded.items():
        lines.append(f"| {design} | {r['raw t leaves [0, 1]']:.1%} | {r['no interval (all folds equal)']:.1%} | "
                     f"{r['raw t coverage']:.1%} | {r['clipped t coverage']:.1%} | {r['logit t coverage']:.1%} |")
    lines += ["", "## Timings (best of 3 where repeated; seconds)", "", "| operation | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in times.items()]
    lines += ["", f"Total run time {elapsed:.0f} s on {os.cpu_count()} CPUs."]
    print("\n".join(lines))
    result = {"command": "python benchmarks/statistics_coverage.py" + (" --quick" if args.quick else ""),
              "seed": 20240601, "fold_sets": fold_sets, "test_sets": test_sims, "resamples": resamples,
              "fold_sizes": {"n_train": N_TRAIN_FOLD, "n_test": N_TEST_FOLD, "folds": FOLDS},
              "fold_coverage": folds, "test_set_coverage": test_cov,
              "null_comparison": {"replicates": reps, "monte_carlo_se_at_5pct": mc_error(0.05, reps),
                                  "rejection_rate": {k: v for k, v in null.items() if k != "replicates"}},
              "few_groups": {"replicates": group_reps, "coverage": groups},
              "extreme_proportions": {"replicates": extreme_reps, "coverage": extreme},
              "bounded_fold_intervals": {"replicates": fold_sets, "rates": bounded},
              "timings_s": times, "total_s": elapsed,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "numpy": np.__version__, "scipy": scipy.__version__}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
