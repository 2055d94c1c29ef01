import numpy as np
import pytest
from sklearn import metrics as skm

from bcc_lightning.reports.metrics import (
    classification_report,
    compute_metrics,
    expected_calibration_error,
    roc_points,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_matches_sklearn(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.3 + rng.random(200) * 0.7, 0, 1).round(2)  # rounded: many ties
    m = compute_metrics(labels, probs, threshold)
    preds = (probs >= threshold).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    assert m["precision"] == pytest.approx(skm.precision_score(labels, preds, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(labels, preds))
    assert m["f1"] == pytest.approx(skm.f1_score(labels, preds))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(labels, probs))
    assert m["auprc"] == pytest.approx(skm.average_precision_score(labels, probs))
    fpr, tpr, _ = skm.roc_curve(labels, probs, drop_intermediate=False)
    ours_fpr, ours_tpr, _ = roc_points(labels, probs)
    assert np.allclose(ours_fpr, fpr) and np.allclose(ours_tpr, tpr)
    tn, fp, fn, tp = skm.confusion_matrix(labels, preds).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["specificity"] == pytest.approx(tn / (tn + fp))


def test_classification_report_matches_sklearn() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 80)
    probs = rng.random(80)
    report = classification_report(compute_metrics(labels, probs))
    reference = skm.classification_report(labels, (probs >= 0.5).astype(int), output_dict=True)
    rows = {line.split()[0]: line.split()[1:] for line in report.splitlines() if line.strip()}
    for name, key in (("benign", "0"), ("malignant", "1")):
        p, r, f, s = rows[name]
        assert float(p) == pytest.approx(reference[key]["precision"], abs=1e-4)
        assert float(r) == pytest.approx(reference[key]["recall"], abs=1e-4)
        assert float(f) == pytest.approx(reference[key]["f1-score"], abs=1e-4)
        assert int(s) == reference[key]["support"]
    assert float(rows["accuracy"][0]) == pytest.approx(reference["accuracy"], abs=1e-4)
    assert float(rows["weighted"][3]) == pytest.approx(reference["weighted avg"]["f1-score"], abs=1e-4)


def test_one_class_only_has_no_auroc() -> None:
    m = compute_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert m["auroc"] is None and m["recall"] == pytest.approx(2 / 3)
    # No benign images: specificity and balanced accuracy are undefined, not 0.0, and say why.
    assert m["specificity"] is None and m["balanced_accuracy"] is None
    assert m["undefined"]["specificity"] == "no benign images"
    assert "n/a" in classification_report(m)


def test_undefined_rates_and_non_finite_probabilities() -> None:
    m = compute_metrics([0, 0], [0.1, 0.2])
    assert m["recall"] is None and m["precision"] is None and m["f1"] is None and m["auprc"] is None
    assert m["undefined"]["recall"] == "no malignant images" and m["specificity"] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0, 1], [0.1, float("nan")])


def test_expected_calibration_error_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.05, 0.15, 0.95, 0.55])
    # bins: [0,.1]: p .05 vs 0; (.1,.2]: .15 vs 0; (.5,.6]: .55 vs 1; (.9,1]: .95 vs 1
    expected = (0.05 + 0.15 + 0.45 + 0.05) / 4
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)


def test_threshold_selection_lives_in_operating_point() -> None:
    from bcc_lightning.reports import metrics
    from bcc_lightning.reports.operating_point import choose_threshold

    assert not hasattr(metrics, "choose_threshold")  # the quadratic scan is gone; one implementation remains
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.9])
    assert choose_threshold(labels, probs, "youden").threshold == pytest.approx(0.35)  # separates perfectly
    assert choose_threshold(labels, probs, "f1").threshold == pytest.approx(0.35)
    assert compute_metrics(labels, probs, 0.35)["accuracy"] == 1.0
