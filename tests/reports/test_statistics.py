"""Intervals and tests in bcc_lightning.reports.statistics, checked against statsmodels, scipy and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW

from bcc_lightning.reports import statistics as S
from bcc_lightning.reports.metrics import canonical, compute_metrics, metric_keys


def scores(n: int, seed: int, separation: float = 1.0, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities with a tunable AUROC; rounding creates ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(separation * (2 * y - 1) + rng.normal(0, 1, n))))
    return y, (np.round(p, decimals) if decimals is not None else p)


def metric_value(m: dict, name: str) -> float:
    return m[canonical(name)]


# --- over folds / seeds -----------------------------------------------------------------------------------------

def test_t_interval_matches_statsmodels_and_handles_small_n():
    values = [0.81, 0.84, 0.79, 0.88, 0.83]
    res = S.t_interval(values, 0.9)
    low, high = DescrStatsW(np.array(values)).tconfint_mean(alpha=0.1)
    assert res.estimate == pytest.approx(np.mean(values))
    assert (res.low, res.high) == pytest.approx((low, high))
    assert res.details["sd"] == pytest.approx(np.std(values, ddof=1))
    assert "Student t" in res.method
    one = S.t_interval([0.8])
    assert one.estimate == 0.8 and one.low is None and one.high is None and "one value" in one.reason
    assert S.t_interval([]).estimate is None
    with pytest.raises(ValueError, match="finite"):
        S.t_interval([0.8, float("nan")])


def test_corrected_t_formula_and_limit():
    d = np.array([0.012, -0.004, 0.02, 0.007, 0.015])
    res = S.corrected_resampled_t(d, n_train=400, n_test=100)
    se = d.std(ddof=1) * math.sqrt(1 / 5 + 100 / 400)
    assert res.statistic == pytest.approx(d.mean() / se)
    assert res.p_value == pytest.approx(2 * stats.t.sf(abs(d.mean() / se), 4))
    q = stats.t.ppf(0.975, 4)
    assert (res.interval.low, res.interval.high) == pytest.approx((d.mean() - q * se, d.mean() + q * se))
    # The correction widens the plain t interval; as n_test / n_train -> 0 it becomes the ordinary paired t-test.
    plain = S.t_interval(d)
    assert res.interval.high - res.interval.low > plain.high - plain.low
    limit = S.corrected_resampled_t(d, n_train=1e12, n_test=1)
    assert limit.p_value == pytest.approx(stats.ttest_1samp(d, 0).pvalue, rel=1e-6)
    one_model = S.corrected_t_interval([0.8, 0.82, 0.85], 300, 100)
    assert one_model.details["se"] == pytest.approx(np.std([0.8, 0.82, 0.85], ddof=1) * math.sqrt(1 / 3 + 1 / 3))


def test_corrected_t_degenerate_cases():
    zero = S.corrected_resampled_t([0.0, 0.0, 0.0], 400, 100)
    assert zero.p_value == 1.0 and "zero" in zero.reason
    same = S.corrected_resampled_t([0.01, 0.01, 0.01], 400, 100)
    assert same.p_value is None and "equal" in same.reason
    one = S.corrected_resampled_t([0.01], 400, 100)
    assert one.p_value is None and one.interval.reason
    with pytest.raises(ValueError, match="positive"):
        S.corrected_resampled_t([0.1, 0.2], 0, 100)


def brute_wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided p from all 2^n sign patterns of the (average) ranks; test-only reference for small n."""
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    centre = ranks.sum() / 2
    totals = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    return float(np.mean(np.abs(np.array(totals) - centre) >= abs(observed - centre) - 1e-9))


def test_wilcoxon_exact_permutation_and_normal():
    exact = S.wilcoxon([0.01, 0.02, 0.03, 0.04, 0.05])
    assert exact.p_value == pytest.approx(0.0625) and "exact null" in exact.method
    assert exact.details["min_attainable_p"] == pytest.approx(0.0625)
    d = np.array([0.3, -0.1, 0.5, 0.7, -0.9, 1.1, 0.4, 0.2])
    assert S.wilcoxon(d).p_value == pytest.approx(brute_wilcoxon_p(d))
    tied = np.array([0.02, 0.02, -0.01, 0.03, 0.03, 0.05, 0.01])
    res = S.wilcoxon(tied)
    assert "permutation" in res.method and res.details["ties"]
    assert res.p_value == pytest.approx(brute_wilcoxon_p(tied))
    big = np.random.default_rng(0).normal(0.1, 1, 80)
    res = S.wilcoxon(big)
    assert "normal" in res.method
    assert res.p_value == pytest.approx(stats.wilcoxon(big, method="asymptotic").pvalue)


def test_wilcoxon_zeros_ties_from_rounding_and_all_zero():
    # 0.3 - 0.2 and 0.2 - 0.1 differ in the last bit: they must still count as a tie.
    d = [0.3 - 0.2, 0.2 - 0.1, 0.0, 0.05, -0.02]
    res = S.wilcoxon(d)
    assert res.details == {"n_nonzero": 4, "n_zero": 1, "ties": True, "min_attainable_p": 0.125}
    assert res.p_value == pytest.approx(brute_wilcoxon_p(np.round([0.1, 0.1, 0.05, -0.02], 12)))
    zero = S.wilcoxon([0.0, 0.0, 0.0])
    assert zero.p_value == 1.0 and "zero" in zero.reason
    assert S.wilcoxon([]).p_value is None
    # Many tied pairs: no 2^n enumeration (this would be 2^40 patterns).
    many = S.wilcoxon(np.tile([0.01, -0.02, 0.03, 0.04], 10))
    assert "normal" in many.method and 0 < many.p_value < 1


# --- proportions and bootstrap ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (7, 10), (1, 3), (412, 500), (9990, 10000)])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_wilson_matches_statsmodels(k, n, level):
    res = S.wilson_interval(k, n, level)
    assert (res.low, res.high) == pytest.approx(proportion_confint(k, n, alpha=1 - level, method="wilson"), abs=1e-12)
    assert res.estimate == k / n and res.method == "Wilson score"


def test_wilson_undefined_and_invalid():
    assert S.wilson_interval(0, 0).low is None and "denominator" in S.wilson_interval(0, 0).reason
    with pytest.raises(ValueError):
        S.wilson_interval(5, 3)


def test_weighted_metrics_equal_compute_metrics_on_materialised_resamples():
    y, p = scores(300, 1)
    sample = S._Sample(y.astype(float), p, 0.5)
    rng = np.random.default_rng(3)
    for _ in range(5):
        idx = rng.integers(0, len(y), len(y))
        w = np.bincount(idx, minlength=len(y))[None, :].astype(float)
        got = sample.weighted(metric_keys("interval"), w)[0]
        ref = compute_metrics(y[idx], p[idx], 0.5)
        assert got == pytest.approx([metric_value(ref, m) for m in metric_keys("interval")], abs=1e-12)


def test_analytic_jackknife_equals_leave_one_out():
    y, p = scores(60, 2, decimals=1)
    sample = S._Sample(y.astype(float), p, 0.5)
    for name in metric_keys("interval"):
        ref = [metric_value(compute_metrics(np.delete(y, i), np.delete(p, i), 0.5), name) for i in range(len(y))]
        assert sample.jackknife(name) == pytest.approx(ref, abs=1e-12), name


@pytest.mark.parametrize(("name", "n"), [("accuracy", 300), ("auroc", 300), ("brier", 40), ("ece", 60)])
def test_bca_equals_scipy_bootstrap_on_the_same_draws(name, n):
    y, p = scores(n, 4, separation=0.8, decimals=None)
    ours = S.bootstrap_ci(name, y, p, n_resamples=2000, seed=1)
    # Same seed, one batch: scipy draws the very same index matrix, so only the interval formulas can differ.
    ref = stats.bootstrap((y, p), lambda yy, pp: metric_value(compute_metrics(yy, pp), name), paired=True,
                          vectorized=False, n_resamples=2000, method="BCa", rng=1).confidence_interval
    assert ours.method.startswith("BCa")
    assert (ours.low, ours.high) == pytest.approx((ref.low, ref.high), abs=1e-9)


def test_callable_metric_uses_scipy_and_matches_named():
    y, p = scores(200, 5)
    named = S.bootstrap_ci("brier", y, p, n_resamples=1000)
    generic = S.bootstrap_ci(lambda yy, pp: float(np.mean((pp - yy) ** 2)), y, p, n_resamples=1000)
    assert "scipy.stats.bootstrap" in generic.method
    assert generic.estimate == pytest.approx(named.estimate)
    assert (generic.low, generic.high) == pytest.approx((named.low, named.high), abs=0.006)


def test_bootstrap_is_reproducible_and_fallbacks_are_recorded():
    y, p = scores(200, 6)
    assert S.bootstrap_ci("auroc", y, p, seed=3) == S.bootstrap_ci("auroc", y, p, seed=3)
    perfect = S.bootstrap_ci("accuracy", y, y.astype(float))
    # Every resample gives 1.0: that is no evidence of certainty, so no zero-width interval.
    assert (perfect.estimate, perfect.low, perfect.high) == (1.0, None, None) and "same value" in perfect.reason
    assert perfect.method.startswith("percentile") and "BCa not usable" in perfect.note
    one_class = S.bootstrap_ci("auroc", np.ones(20), np.linspace(0, 1, 20))
    assert one_class.estimate is None and one_class.low is None and "both classes" in one_class.reason
    tiny_y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    tiny = S.bootstrap_ci("auroc", tiny_y, np.linspace(0.1, 0.9, 10), n_resamples=500)
    assert tiny.details["undefined_resamples"] > 0 and "dropped" in tiny.note
    with pytest.raises(ValueError, match="unknown metric"):
        S.bootstrap_ci("kappa", y, p)


def test_cluster_bootstrap_resamples_whole_groups():
    y, p = scores(80, 7)
    copies = 6
    y_rep, p_rep = np.repeat(y, copies), np.repeat(p, copies)
    groups = np.repeat(np.arange(80), copies)
    clustered = S.bootstrap_ci("auroc", y_rep, p_rep, groups=groups, n_resamples=1000)
    # Copies of one image in one group carry no more information than the image: identical draws, same interval.
    single = S.bootstrap_ci("auroc", y, p, groups=np.arange(80), n_resamples=1000)
    assert (clustered.low, clustered.high) == pytest.approx((single.low, single.high), abs=1e-12)
    assert clustered.method.startswith("percentile cluster") and clustered.details["n_groups"] == 80
    naive = S.bootstrap_ci("auroc", y_rep, p_rep, n_resamples=1000)
    ratio = (clustered.high - clustered.low) / (naive.high - naive.low)
    assert 1.8 < ratio < 3.2  # about sqrt(6) = 2.45: ignoring the groups overstates the sample size six-fold
    assert S.bootstrap_ci("auroc", y, p, groups=np.zeros(80)).reason == "fewer than two groups"


def test_metric_intervals_methods_and_undefined():
    y, p = scores(400, 8)
    res = S.metric_intervals(y, p, threshold=0.5, n_resamples=500)
    m = compute_metrics(y, p, 0.5)
    expected = set(metric_keys("interval"))  # one key per metric: no "sensitivity" beside "recall"
    assert set(res) == expected
    for name in metric_keys("interval"):
        assert res[name].estimate == pytest.approx(metric_value(m, name), abs=1e-12), name
        assert res[name].low <= res[name].estimate <= res[name].high, name
    for name in ("accuracy", "recall", "specificity", "precision", "npv"):
        assert res[name].method == "Wilson score"
    assert res["auroc"].method.startswith("BCa bootstrap")
    wilson = S.wilson_interval(m["tp"], m["tp"] + m["fn"])
    assert (res["recall"].low, res["recall"].high) == (wilson.low, wilson.high)
    none_positive = S.metric_intervals(y, p, threshold=1.01, n_resamples=200)
    assert none_positive["precision"].estimate is None and "predicted malignant" in none_positive["precision"].reason
    assert none_positive["recall"].estimate == 0.0
    assert res["balanced_accuracy"].method.startswith("MOVER")
    grouped = S.metric_intervals(y, p, groups=np.arange(400) // 4, n_resamples=300)
    for name in ("accuracy", "recall", "specificity", "precision", "npv"):
        assert grouped[name].method.startswith("Wilson score with the design effect over"), name
    for name in ("f1", "auprc", "brier", "ece"):
        assert grouped[name].method.startswith("percentile cluster"), name
    assert grouped["auroc"].method.startswith("Obuchowski")
    assert all(v.n_groups is not None and not v.unreliable for v in grouped.values())
    assert all(v.n_groups is None for v in res.values())


# --- comparing two models on the same images --------------------------------------------------------------------

def delong_reference(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """O(n^2) structural components straight from DeLong, DeLong & Clarke-Pearson (1988): (auc_a, auc_b, var)."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for p in (a, b):
        x, z = p[pos], p[neg]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    s10, s01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    s = s10 / pos.sum() + s01 / neg.sum()
    return float(v10[0].mean()), float(v10[1].mean()), float(s[0, 0] + s[1, 1] - 2 * s[0, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_quadratic_definition(seed):
    y, a = scores(250, seed, separation=1.0)
    rng = np.random.default_rng(seed + 10)
    b = np.round(np.clip(a + rng.normal(0, 0.15, len(a)), 0, 1), 2)  # correlated with a, with ties
    res = S.delong_test(y, a, b)
    auc_a, auc_b, var = delong_reference(y, a, b)
    assert res.details["auc_a"] == pytest.approx(auc_a) and res.details["auc_b"] == pytest.approx(auc_b)
    assert res.details["auc_a"] == pytest.approx(compute_metrics(y, a)["auroc"])
    assert res.details["se"] == pytest.approx(math.sqrt(var))
    z = (auc_a - auc_b) / math.sqrt(var)
    assert res.statistic == pytest.approx(z)
    assert res.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert res.interval.low == pytest.approx(auc_a - auc_b - 1.959963984540054 * math.sqrt(var))


def test_delong_is_calibrated_under_the_null_and_handles_degenerate_input():
    rng = np.random.default_rng(0)
    p_values = []
    for _ in range(300):
        y = rng.integers(0, 2, 200)
        shared = rng.normal(0, 1, 200)
        a = y + shared + rng.normal(0, 1, 200)  # two equally good, correlated models
        b = y + shared + rng.normal(0, 1, 200)
        p_values.append(S.delong_test(y, a, b).p_value)
    assert 0.02 < np.mean(np.array(p_values) < 0.05) < 0.09
    y, a = scores(100, 3)
    same = S.delong_test(y, a, a)
    assert same.p_value == 1.0 and same.interval.low is None and "identically" in same.reason
    assert S.delong_test(np.ones(10), a[:10], a[:10]).p_value is None


@pytest.mark.parametrize(("only_a", "only_b", "both_right", "both_wrong"),
                         [(3, 9, 50, 10), (0, 5, 20, 2), (12, 12, 30, 1), (40, 22, 300, 30), (5, 60, 100, 9),
                          (200, 150, 4000, 100)])
def test_mcnemar_matches_statsmodels(only_a, only_b, both_right, both_wrong):
    correct_a = np.r_[np.ones(only_a), np.zeros(only_b), np.ones(both_right), np.zeros(both_wrong)]
    correct_b = np.r_[np.zeros(only_a), np.ones(only_b), np.ones(both_right), np.zeros(both_wrong)]
    res = S.mcnemar_test(correct_a, correct_b)
    table = [[both_right, only_a], [only_b, both_wrong]]
    if only_a + only_b < 25:
        ref = sm_mcnemar(table, exact=True)
        assert "exact" in res.method
    else:
        ref = sm_mcnemar(table, exact=False, correction=True)
        assert "continuity" in res.method
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.details["only_a_correct"] == only_a and res.details["only_b_correct"] == only_b


def test_mcnemar_edge_cases():
    agree = S.mcnemar_test([1, 0, 1], [1, 0, 1])
    assert agree.p_value == 1.0 and "discordant" in agree.reason
    balanced = S.mcnemar_test(np.r_[np.ones(15), np.zeros(15)], np.r_[np.zeros(15), np.ones(15)])
    assert balanced.p_value == 1.0  # |b - c| - 1 floored at 0: equal counts are no evidence at all
    with pytest.raises(ValueError, match="length"):
        S.mcnemar_test([1, 0], [1])


def test_paired_bootstrap_difference():
    y, a = scores(2000, 11, separation=1.0, decimals=3)
    rng = np.random.default_rng(12)
    b = np.clip(a + rng.normal(0, 0.1, len(a)), 0, 1)
    diff = S.paired_bootstrap_diff("auroc", y, a, b, n_resamples=1000)
    delong = S.delong_test(y, a, b)
    assert diff.estimate == pytest.approx(delong.interval.estimate)
    assert (diff.low, diff.high) == pytest.approx((delong.interval.low, delong.interval.high), abs=0.004)
    assert "difference" in diff.method
    # Pairing: the interval of the difference is much narrower than either model's own interval.
    own = S.bootstrap_ci("auroc", y, a, n_resamples=1000)
    assert diff.high - diff.low < 0.8 * (own.high - own.low)
    same = S.paired_bootstrap_diff("accuracy", y, a, a, n_resamples=200)
    assert (same.estimate, same.low, same.high) == (0.0, None, None) and "same value" in same.reason
    grouped = S.paired_bootstrap_diff(lambda yy, pp: compute_metrics(yy, pp)["accuracy"], y[:200], a[:200], b[:200],
                                      groups=np.arange(200) // 5, n_resamples=200)
    assert grouped.method.startswith("percentile cluster") and grouped.low <= grouped.estimate <= grouped.high


# --- images clustered in patients -------------------------------------------------------------------------------

def clustered(n_groups: int, per_group: int, seed: int, patient_sd: float = 0.6) -> tuple[np.ndarray, ...]:
    """Labels per patient, two correlated models with patient effects of their own, and the group ids."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), per_group)
    y = (rng.random(n_groups) < 0.45).astype(int)[groups]
    y[:per_group], y[per_group:2 * per_group] = 0, 1  # both classes present
    shared = rng.normal(0, 1, len(y))
    a = 1.2 * y + shared + rng.normal(0, patient_sd, n_groups)[groups]
    b = 1.2 * y + shared + rng.normal(0, patient_sd, n_groups)[groups] + rng.normal(0, 0.5, len(y))
    return y, 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-b)), groups


def test_clustered_delong_reduces_to_delong_with_one_image_per_group():
    y, a = scores(300, 21, decimals=2)
    b = np.round(np.clip(a + np.random.default_rng(22).normal(0, 0.15, len(a)), 0, 1), 2)
    plain, clus = S.delong_test(y, a, b), S.clustered_delong_test(y, a, b, groups=np.arange(len(y)))
    assert clus.statistic == pytest.approx(plain.statistic, rel=1e-12)
    assert clus.p_value == pytest.approx(plain.p_value, rel=1e-12)
    assert (clus.interval.low, clus.interval.high) == pytest.approx((plain.interval.low, plain.interval.high))
    assert "Obuchowski 1997" in clus.method and clus.details["n_groups"] == len(y)
    # Copies of each image in its own group add no information: the same test as on the originals.
    copies = S.clustered_delong_test(np.repeat(y, 5), np.repeat(a, 5), np.repeat(b, 5), np.repeat(np.arange(300), 5))
    assert copies.statistic == pytest.approx(plain.statistic, rel=1e-10)
    naive = S.delong_test(np.repeat(y, 5), np.repeat(a, 5), np.repeat(b, 5))
    assert abs(naive.statistic) > 2 * abs(plain.statistic)  # ignoring the groups inflates z about sqrt(5)-fold


def test_clustered_auroc_interval_uses_obuchowskis_variance():
    y, a = scores(200, 23, decimals=None)
    one = S.clustered_auroc_interval(y, a, np.arange(200))
    assert one.details["se"] == pytest.approx(S.delong_test(y, a, 1 - a).details["se_auc_a"], rel=1e-12)
    assert 0 < one.low < one.estimate < one.high < 1 and one.n_groups == min(np.sum(y == 0), np.sum(y == 1))
    perfect = S.clustered_auroc_interval(y, y.astype(float), np.arange(200))
    assert perfect.estimate == 1.0 and perfect.low is None and "perfect" in perfect.reason


@pytest.mark.parametrize(("only_a", "only_b", "both_right", "both_wrong"), [(3, 9, 50, 10), (40, 22, 300, 30)])
def test_clustered_mcnemar_reduces_to_statsmodels_chi_square(only_a, only_b, both_right, both_wrong):
    correct_a = np.r_[np.ones(only_a), np.zeros(only_b), np.ones(both_right), np.zeros(both_wrong)]
    correct_b = np.r_[np.zeros(only_a), np.ones(only_b), np.ones(both_right), np.zeros(both_wrong)]
    ref = sm_mcnemar([[both_right, only_a], [only_b, both_wrong]], exact=False, correction=False)
    res = S.clustered_mcnemar_test(correct_a, correct_b, groups=np.arange(len(correct_a)))
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12) and res.p_value == pytest.approx(ref.pvalue)
    assert "Durkalski" in res.method
    copies = S.clustered_mcnemar_test(np.repeat(correct_a, 4), np.repeat(correct_b, 4),
                                      np.repeat(np.arange(len(correct_a)), 4))
    assert copies.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    balanced = S.clustered_mcnemar_test([1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1])
    assert balanced.p_value == 1.0 and "no evidence" in balanced.reason


def test_clustered_tests_name_themselves_and_need_two_groups_per_class():
    y, a, b, groups = clustered(30, 6, 24)
    res = S.clustered_delong_test(y, a, b, groups)
    assert res.details["groups_benign"] + res.details["groups_malignant"] == 30 and 0 < res.p_value <= 1
    few = S.clustered_delong_test(y[:12], a[:12], b[:12], groups[:12])
    assert few.p_value is None and "two groups" in few.reason


def test_clustered_proportion_interval_is_wilson_on_the_effective_size():
    rng = np.random.default_rng(25)
    groups = np.repeat(np.arange(12), 10)
    hits = (rng.random(120) < rng.uniform(0.5, 0.95, 12)[groups]).astype(int)
    res = S.clustered_proportion_interval(hits, groups)
    n_eff = res.details["n_effective"]
    ref = proportion_confint(hits.mean() * n_eff, n_eff, alpha=0.05, method="wilson")
    assert (res.low, res.high) == pytest.approx(ref, abs=1e-12)
    assert res.n_groups == 12 and not res.unreliable and res.details["design_effect"] >= 1
    z, t = stats.norm.ppf(0.975), stats.t.ppf(0.975, 11)
    assert n_eff == pytest.approx(120 / res.details["design_effect"] * (z / t) ** 2)
    # All correct: the design effect cannot be estimated; every group then counts once, never [1, 1].
    ones = S.clustered_proportion_interval(np.ones(120), groups)
    ref = proportion_confint(12 * (z / t) ** 2, 12 * (z / t) ** 2, alpha=0.05, method="wilson")
    assert ones.high == 1.0 and ones.low == pytest.approx(ref[0], abs=1e-12) and ones.low < 0.9
    single = S.clustered_proportion_interval(np.ones(10), np.zeros(10))
    assert single.estimate == 1.0 and single.low is None and "one group" in single.reason and single.unreliable
    few = S.clustered_proportion_interval(hits[:40], groups[:40])
    assert few.n_groups == 4 and few.unreliable and not res.unreliable


def test_every_image_called_malignant_gets_real_intervals():
    y, p, _, groups = clustered(20, 8, 26)
    everything = np.ones_like(p)  # a model that calls every image malignant
    for g in (None, groups):
        res = S.metric_intervals(y, everything, threshold=0.5, groups=g, n_resamples=300)
        sens, ba = res["recall"], res["balanced_accuracy"]
        assert sens.estimate == 1.0 and sens.high == 1.0 and sens.low < 0.99, g
        assert ba.estimate == 0.5 and ba.low < 0.5 < ba.high, g
        assert res["specificity"].estimate == 0.0 and res["specificity"].high > 0
    plain = S.metric_intervals(y, everything, groups=None, n_resamples=300)["recall"]
    clus = S.metric_intervals(y, everything, groups=groups, n_resamples=300)["recall"]
    assert clus.low < plain.low  # widened by the design effect: 8 alike images per patient
    assert plain.low == pytest.approx(proportion_confint(int(y.sum()), int(y.sum()), method="wilson")[0])


def test_one_benign_group_gives_no_specificity_interval_and_no_interval_has_zero_width():
    y, p, _, groups = clustered(10, 6, 27)
    y = np.where(groups == 0, 0, 1)  # the test split's benign images all come from one patient
    res = S.metric_intervals(y, p, groups=groups, n_resamples=300)
    spec = res["specificity"]
    assert spec.estimate is not None and spec.low is None and "one group" in spec.reason and spec.n_groups == 1
    assert res["auroc"].low is None and "1 benign group" in res["auroc"].reason
    assert res["recall"].n_groups == 9 and not res["recall"].unreliable  # holds from 5 groups on
    assert res["f1"].n_groups == 10 and res["f1"].unreliable  # the percentile bootstrap needs 20
    assert res["accuracy"].details["groups"] == {"benign": 1, "malignant": 9}
    for inputs in ((y, p, groups), (y, y.astype(float), groups), (y, y.astype(float), None)):
        for name, ci in S.metric_intervals(*inputs[:2], groups=inputs[2], n_resamples=200).items():
            assert ci.low is None or ci.high - ci.low > 0, name
            assert ci.low is None or 0 <= ci.low <= ci.high <= 1, name


def test_few_groups_use_obuchowski_for_auroc_and_are_marked_unreliable():
    y, p, _, groups = clustered(6, 10, 28)
    res = S.metric_intervals(y, p, groups=groups, n_resamples=300)
    smaller = min(len(set(groups[y == 0])), len(set(groups[y == 1])))
    assert res["auroc"].method.startswith("Obuchowski") and res["auroc"].n_groups == smaller < S.MIN_GROUPS_FEW
    assert res["auroc"].unreliable and res["accuracy"].n_groups == 6 and not res["accuracy"].unreliable
    assert res["f1"].unreliable and res["f1"].n_groups == 6
    assert 0 < res["auroc"].low < res["auroc"].estimate < res["auroc"].high < 1


def test_bounded_t_intervals_and_equal_values():
    values = [0.99, 1.0, 0.9]
    res = S.t_interval(values, bounds=(0.0, 1.0))
    raw = S.t_interval(values)
    assert raw.high > 1 and res.high == 1.0 and res.low == raw.low and "clipped" in res.note
    corrected = S.corrected_t_interval(values, 400, 100, bounds=(0.0, 1.0))
    assert corrected.high == 1.0
    same = S.t_interval([1.0, 1.0, 1.0], bounds=(0.0, 1.0))
    assert same.estimate == 1.0 and same.low is None and "equal" in same.reason
    logit = S.logit_t_interval(values, n_test=100)
    assert 0 < logit.low < logit.estimate < logit.high < 1
