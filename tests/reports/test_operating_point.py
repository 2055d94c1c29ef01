"""Threshold selection against brute force, operating-point parsing, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_curve

from bcc_lightning.reports import operating_point as op
from bcc_lightning.reports.metrics import compute_metrics


def tied_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(1 / (1 + np.exp(-(0.8 * (2 * y - 1) + rng.normal(0, 1, n)))), 2)  # rounding: many ties
    return y, p


def brute_force(y: np.ndarray, p: np.ndarray, method: str) -> tuple[float, float]:
    """(threshold, criterion value) by scoring every candidate with sklearn, O(n^2); same definitions."""
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]  # drop sklearn's "nothing positive" point
    assert np.array_equal(thresholds, np.unique(p)[::-1])
    n_pos = int(y.sum())
    if method in ("youden", "f1"):
        values = []
        for t in thresholds:
            tn, fp, fn, tp = confusion_matrix(y, (p >= t).astype(int), labels=[0, 1]).ravel()
            values.append(tpr[list(thresholds).index(t)] - fpr[list(thresholds).index(t)] if method == "youden"
                          else 2 * tp / (2 * tp + fp + fn))
        values = np.array(values)
        best = max(values)
        lowest = min(t for t, v in zip(thresholds, values) if v >= best - 1e-12)
        return float(lowest), float(values[list(thresholds).index(lowest)])
    kind, x = method.split("@")
    x = float(x)
    if kind == "sensitivity":
        sens = np.array([((p >= t) & (y == 1)).sum() / n_pos for t in thresholds])
        t = max(t for t, s in zip(thresholds, sens) if s >= x)
        return float(t), float(sens[list(thresholds).index(t)])
    spec = 1 - fpr
    ok = [t for t, s in zip(thresholds, spec) if s >= x]
    if not ok:
        return float(np.nextafter(thresholds.max(), np.inf)), 1.0
    t = min(ok)
    return float(t), float(spec[list(thresholds).index(t)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["youden", "f1", "sensitivity@0.95", "specificity@0.95", "sensitivity@0.8",
                                    "specificity@0.6"])
def test_choose_threshold_matches_brute_force(seed, method):
    y, p = tied_scores(300, seed)
    chosen = op.choose_threshold(y, p, method)
    threshold, value = brute_force(y, p, method)
    assert chosen.threshold == threshold
    assert chosen.value == pytest.approx(value)
    m = compute_metrics(y, p, chosen.threshold)
    assert chosen.sensitivity == pytest.approx(m["recall"]) and chosen.specificity == pytest.approx(m["specificity"])
    assert chosen.f1 == pytest.approx(m["f1"]) and chosen.method == method


def test_equal_criteria_pick_the_lowest_threshold():
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    # Youden's J is 0.5 at both 0.4 (tp 1, fp 0) and 0.2 (tp 2, fp 1): the lower one misses no malignant image.
    res = op.choose_threshold(y, p, "youden")
    assert (res.threshold, res.value, res.sensitivity) == (0.2, 0.5, 1.0)
    y, p = np.array([1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert op.choose_threshold(y, p, "f1").threshold == 0.7  # F1 0.8 at 0.7 beats 2/3 at 0.9


def test_constraint_definitions_hold_at_the_boundary():
    y, p = tied_scores(500, 9)
    distinct = np.unique(p)
    sens = op.choose_threshold(y, p, "sensitivity@0.95")
    assert sens.sensitivity >= 0.95
    higher = distinct[distinct > sens.threshold]
    assert len(higher) == 0 or compute_metrics(y, p, higher.min())["recall"] < 0.95  # the highest such threshold
    spec = op.choose_threshold(y, p, "specificity@0.95")
    assert spec.specificity >= 0.95
    lower = distinct[distinct < spec.threshold]
    assert len(lower) == 0 or compute_metrics(y, p, lower.max())["specificity"] < 0.95  # the lowest such threshold


def test_target_met_exactly_counts():
    y = np.r_[np.ones(20), np.zeros(20)].astype(int)
    p = np.r_[np.linspace(0.5, 0.99, 20), np.linspace(0.01, 0.49, 20)]
    res = op.choose_threshold(y, p, "sensitivity@0.95")  # 19 of 20 = 0.95 exactly satisfies ">= 0.95"
    assert res.threshold == p[1] and res.sensitivity == 0.95 and res.value == 0.95
    res = op.choose_threshold(y, p, "specificity@0.95")
    assert res.threshold == p[39] and res.specificity == 0.95  # one benign image at or above it


def test_unreachable_specificity_and_fixed_threshold():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.9, 0.9, 0.1, 0.9, 0.2])  # two of three benign images share the top score
    res = op.choose_threshold(y, p, "specificity@0.9")
    assert res.threshold > 0.9 and res.sensitivity == 0.0 and res.specificity == 1.0
    fixed = op.choose_threshold(y, p, 0.5)
    assert fixed.threshold == 0.5 and fixed.value is None and fixed.criterion == "fixed threshold"
    assert fixed.sensitivity == 0.5 and fixed.specificity == pytest.approx(1 / 3)


def test_one_class_is_a_clear_error():
    with pytest.raises(ValueError, match="only benign"):
        op.choose_threshold([0, 0, 0], [0.1, 0.2, 0.3], "youden")
    with pytest.raises(ValueError, match="only malignant"):
        op.choose_threshold([1, 1], [0.1, 0.2], "sensitivity@0.9")
    with pytest.raises(ValueError, match="differ in length"):
        op.choose_threshold([0, 1], [0.1], "f1")


def test_large_input_is_fast():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1_000_000)
    p = rng.random(1_000_000)
    res = op.choose_threshold(y, p, "sensitivity@0.95")  # O(n log n): well under a second here
    assert abs(res.sensitivity - 0.95) < 1e-3


@pytest.mark.parametrize(("text", "parsed"), [("youden", "youden"), (" F1 ", "f1"), ("sensitivity@0.95",
                          "sensitivity@0.95"), ("Specificity @ 0.9", "specificity@0.9"), ("0.3", 0.3), (0.5, 0.5),
                          (1, 1.0), ("0", 0.0)])
def test_parse_operating_point_accepts(text, parsed):
    assert op.parse_operating_point(text) == parsed


@pytest.mark.parametrize(("text", "message"), [("sensitivity@95", "percentage"), ("sensitivity@1", "strictly"),
                         ("specificity@abc", "not a number"), ("roc", "accepted"), ("1.5", r"\[0, 1\]"),
                         (True, "accepted"), (None, "accepted"), ("nan", r"\[0, 1\]"), ("sens@0.9", "accepted")])
def test_parse_operating_point_rejects(text, message):
    with pytest.raises(ValueError, match=message) as info:
        op.parse_operating_point(text)
    assert "youden" in str(info.value)  # every error lists the accepted forms


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_temperature_scaling_fixes_over_confidence():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, 5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = 3.0 * true_logit  # three times too confident
    temperature = op.fit_temperature(y, logits)
    assert 2.6 < temperature < 3.4
    before, after = op.apply_temperature(logits, 1.0), op.apply_temperature(logits, temperature)
    assert nll(y, after) < nll(y, before) - 0.05
    assert compute_metrics(y, after)["ece"] < compute_metrics(y, before)["ece"] / 2
    assert np.array_equal(np.argsort(after, kind="stable"), np.argsort(before, kind="stable"))  # ranking kept
    under = op.fit_temperature(y, 0.5 * true_logit)  # under-confident: T < 1 sharpens
    assert 0.4 < under < 0.6


def test_calibrate_then_choose_threshold():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 1.5, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    logits = 3.0 * true_logit
    temperature, point = op.fit_operating_point(y, logits, "sensitivity@0.9")
    calibrated = op.apply_temperature(logits, temperature)
    assert point == op.choose_threshold(y, calibrated, "sensitivity@0.9")
    raw = op.choose_threshold(y, op.apply_temperature(logits, 1.0), "sensitivity@0.9")
    # Same images called malignant, but the thresholds live on different scales and are not interchangeable.
    assert point.sensitivity == raw.sensitivity and abs(point.threshold - raw.threshold) > 0.05
    assert op.fit_operating_point(y, logits, "youden", calibrate=False)[0] == 1.0


def test_temperature_edge_cases():
    with pytest.raises(ValueError, match="both classes"):
        op.fit_temperature([1, 1, 1], [0.5, 1.0, 2.0])
    with pytest.warns(RuntimeWarning, match="bound"):
        op.fit_temperature([0, 0, 1, 1], [-3.0, -2.0, 2.0, 3.0])  # separable: NLL falls all the way to T -> 0
    assert op.fit_temperature([0, 1], [0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="positive"):
        op.apply_temperature([0.1], 0.0)
    probs = np.array([0.1, 0.5, 0.9])
    assert op.apply_temperature(op.logits_from_probs(probs), 1.0) == pytest.approx(probs)


def test_temperature_over_tta_views_matches_the_mean_of_view_probabilities():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 1.5, 3000)
    y = (rng.random(3000) < 1 / (1 + np.exp(-base))).astype(int)
    views = 3.0 * (base[:, None] + rng.normal(0, 0.2, (3000, 8)))  # 8 over-confident TTA views
    temperature = op.fit_temperature(y, views)
    assert 2.0 < temperature < 4.0
    expected = (1 / (1 + np.exp(-views / temperature))).mean(axis=1)
    assert op.apply_temperature(views, temperature) == pytest.approx(expected)
    assert op.apply_temperature(views[:, :1], 1.5) == pytest.approx(op.apply_temperature(views[:, 0], 1.5))
