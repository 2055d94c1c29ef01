"""The metric registry (reports/metrics.py): a toy metric registered in one place reaches metrics.json, report.md,
the model card, compare and aggregate with an interval, and every registered metric appears where its flags say;
old spellings are mapped on read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml
from sklearn.metrics import balanced_accuracy_score

from bcc_lightning.reports.aggregate import write_summary
from bcc_lightning.reports.card import build_card, card_markdown
from bcc_lightning.reports.metrics import (
    METRICS,
    compute_metrics,
    metric_keys,
    read_metrics,
    register_metric,
    unregister_metric,
)
from bcc_lightning.reports.report import write_metric_files, write_metrics_json, write_report_md
from bcc_lightning.reports.statistics import metric_intervals
from bcc_lightning.tasks.compare import compare_scores


@pytest.fixture
def youden() -> Iterator[str]:
    """Exactly the README's one-file example: Youden's J = sensitivity + specificity - 1, in [-1, 1]."""

    @register_metric("youden_j", label="Youden's J", undefined="needs both classes", both_classes=True,
                     summary=True, bounds=(-1.0, 1.0))
    def youden_j(tp: Any, fp: Any, tn: Any, fn: Any) -> Any:
        return tp / (tp + fn) + tn / (tn + fp) - 1

    yield "youden_j"
    unregister_metric("youden_j")


def _scores(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    return labels, np.clip(0.45 * labels + rng.uniform(0, 0.55, n), 0, 1)


def _evaluation(outdir: Path, labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    metrics, figures = write_metric_files(outdir, labels, probs, 0.5, "test")
    for fig in figures.values():
        plt.close(fig)
    result = {"model": "toy", "checkpoint": "none.ckpt", "data_root": str(outdir), "split": "test", "metrics": metrics,
              "threshold_method": "fixed", "tta": False}
    write_metrics_json(outdir, result)
    write_report_md(outdir, result, [], [], "")
    return result


def test_a_toy_metric_is_one_registration_and_reaches_every_table(youden: str, tmp_path: Path) -> None:
    labels, probs = _scores()
    result = _evaluation(tmp_path, labels, probs)
    # metrics.json: the value (sklearn's adjusted balanced accuracy is Youden's J) and an interval naming its method.
    saved = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    preds = (probs >= 0.5).astype(int)
    assert saved[youden] == pytest.approx(balanced_accuracy_score(labels, preds, adjusted=True), abs=1e-12)
    ci = saved["intervals"][youden]
    assert ci["low"] < saved[youden] < ci["high"] and ci["method"].startswith("BCa bootstrap over images")
    # report.md and the model card show it with its interval.
    report = (tmp_path / "report.md").read_text()
    assert f"| Youden's J | {saved[youden]:.4f} | [{ci['low']:.4f}, {ci['high']:.4f}] (BCa" in report
    card = build_card({"model": {"name": "toy"}}, result, None)
    assert card["metrics"]["Youden's J"]["ci95"] == [ci["low"], ci["high"]]
    assert "| Youden's J |" in card_markdown(card)
    # Every registered metric (the toy one too) is in metrics.json, report.md and the card where its flags say.
    for key, spec in METRICS.items():
        assert key in saved and (key in saved["intervals"]) == (spec.interval is not None), key
        assert (f"| {spec.label} | " in report) == spec.report and (spec.short in card["metrics"]) == spec.card, key
    assert "sensitivity" not in saved and "sensitivity" not in saved["intervals"]  # one spelling: recall
    # compare: a paired interval of A - B, the point estimate favouring the better model.
    other = np.random.default_rng(1).uniform(0, 1, len(probs))  # an uninformative model B
    rows = {r["metric"]: r for r in compare_scores(labels, probs, other, 0.5, 0.5, n_resamples=200)["differences"]}
    row = rows[youden]
    assert row["difference"] == pytest.approx(compute_metrics(labels, probs)[youden] - compute_metrics(
        labels, other)[youden]) and row["ci"]["low"] < row["difference"] < row["ci"]["high"]
    assert row["difference"] > 0 and row["favours"] == "A"
    # aggregate: three seeds of two configurations, read back from their metrics.json.
    sweep = tmp_path / "sweep"
    for job, (model, seed) in enumerate((m, s) for m in ("a", "b") for s in range(3)):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model={model}", f"seed={seed}"]))
        y, p = _scores(seed=job)
        write_metrics_json(folder, {"monitor": "val/loss", "best_monitor_value": 0.5, "fold": None,
                                    "metrics": compute_metrics(y, p), "data_root": None})
    summary = write_summary(sweep)
    stats = summary["aggregate"]["configs"]["model=a"]["stats"][youden]
    assert stats["n"] == 3 and stats["ci_low"] < stats["mean"] < stats["ci_high"] and stats["ci_low"] >= -1
    assert youden in summary["aggregate"]["comparisons"][0]["metrics"]
    table = (sweep / "aggregate.md").read_text().splitlines()
    assert next(line for line in table if line.startswith("| configuration | runs |")).endswith(" | Youden's J |")
    assert any(line.startswith("| model=a | model=b | 3 | Youden's J | ") for line in table)  # paired comparison
    assert "test Youden's J" in (sweep / "sweep_summary.md").read_text()


def test_old_spellings_are_mapped_on_read_not_written() -> None:
    old = {"acc": 0.75, "sensitivity": 0.5, "specificity": 1.0}
    assert read_metrics(old) == {"accuracy": 0.75, "recall": 0.5, "specificity": 1.0}
    both = {"recall": 0.5, "sensitivity": 0.5}  # metrics.json before the registry wrote both
    assert read_metrics(both) == {"recall": 0.5}
    assert not {"acc", "sensitivity"} & set(compute_metrics([0, 1], [0.2, 0.9]))
    assert [METRICS[k].logger for k in metric_keys("logger")] == ["acc", "recall", "precision", "f1", "auroc"]
    with pytest.raises(ValueError, match="already registered"):
        register_metric("sensitivity", proportion=(("tp",), ("tp", "fn")), interval="wilson")
    with pytest.raises(ValueError, match="interval must be one of"):
        register_metric("toy", interval="jackknife")


def test_a_scores_metric_without_a_vectorised_form_is_bootstrapped_as_a_function() -> None:
    @register_metric("score_gap", label="score gap", inputs="scores", undefined="needs both classes",
                     both_classes=True, bounds=(-1.0, 1.0))
    def score_gap(labels: np.ndarray, probs: np.ndarray, ranked: np.ndarray) -> float | None:
        if labels.min(initial=1) == labels.max(initial=0):
            return None
        return float(probs[labels == 1].mean() - probs[labels == 0].mean())

    try:
        labels, probs = _scores()
        plain = metric_intervals(labels, probs, n_resamples=200)["score_gap"]
        assert plain.estimate == pytest.approx(compute_metrics(labels, probs)["score_gap"])
        assert plain.low < plain.estimate < plain.high and "scipy.stats.bootstrap" in plain.method
        grouped = metric_intervals(labels, probs, groups=np.arange(len(labels)) // 2, n_resamples=200)["score_gap"]
        assert grouped.defined and grouped.method.startswith("percentile cluster bootstrap over 20 groups")
    finally:
        unregister_metric("score_gap")
