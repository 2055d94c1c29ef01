"""bcc-compare: two tiny checkpoints on the same images, the statistics it reports, and its refusals."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bcc_lightning.reports.metrics import metric_keys
from bcc_lightning.reports.statistics import (
    clustered_delong_test,
    clustered_mcnemar_test,
    delong_test,
    mcnemar_test,
    paired_bootstrap_diff,
)
from bcc_lightning.tasks import compare
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config, make_folder, tiny_train_config


def train_tiny(root: Path, run: Path, overrides: list[str]) -> Path:
    """One epoch at 32 px on `root`; returns its best checkpoint."""
    from bcc_lightning.tasks import train as training

    run.mkdir(parents=True)
    previous = Path.cwd()
    os.chdir(run)
    try:
        training.run(tiny_train_config(root, ["model.img_size=32", "logger=none", "report.cam_per_group=0",
                                              "report.grid_size=0", "data.audit=off", *overrides]))
    finally:
        os.chdir(previous)
    return Path(json.loads((run / "metrics.json").read_text())["checkpoint"])


@pytest.fixture(scope="module")
def two_checkpoints(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("compare_runs")
    return (train_tiny(demo_root, base / "a", ["seed=1", "optimizer.lr=1e-3"]),
            train_tiny(demo_root, base / "b", ["seed=2", "optimizer.lr=3e-3", "model.img_size=48"]))


def run_compare(a: Path, b: Path, outdir: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(outdir)
    return compare.run(compose_config("compare", [f"ckpt={a}", f"other={b}", "data.num_workers=0",
                                                  "trainer.accelerator=cpu", "trainer.precision=32-true",
                                                  "n_resamples=200", *overrides]))


def test_compare_end_to_end(two_checkpoints: tuple[Path, Path], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = two_checkpoints
    result = run_compare(a, b, tmp_path, monkeypatch)
    for name in ("compare.md", "compare.json", "compare_roc.png", "compare_predictions.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    body = json.loads((tmp_path / "compare.json").read_text())
    rows = list(csv.DictReader((tmp_path / "compare_predictions.csv").open()))
    labels = np.array([int(r["true_label"]) for r in rows])
    pa, pb = (np.array([float(r[k]) for r in rows]) for k in ("prob_a", "prob_b"))
    assert body["n"] == len(rows) > 0 and not np.allclose(pa, pb)  # different seeds, lr and input sizes
    expected = delong_test(labels, pa, pb)
    assert body["delong"]["p_value"] == pytest.approx(expected.p_value, rel=1e-9)
    thresholds = [body["models"][k]["threshold"] for k in ("A", "B")]
    assert thresholds == [0.5, 0.5]
    mc = mcnemar_test((pa >= 0.5) == labels, (pb >= 0.5) == labels)
    assert body["mcnemar"]["p_value"] == pytest.approx(mc.p_value)
    by_metric = {row["metric"]: row for row in body["differences"]}
    assert set(by_metric) == set(metric_keys("summary"))  # the registry's summary metrics, one spelling each
    assert by_metric["auroc"]["p_value"] == body["delong"]["p_value"]
    assert by_metric["accuracy"]["p_value"] == body["mcnemar"]["p_value"]
    assert by_metric["recall"]["p_value"] is None and by_metric["recall"]["ci"]["method"]
    ci = paired_bootstrap_diff("accuracy", labels, pa, pb, n_resamples=200)
    assert (by_metric["accuracy"]["ci"]["low"], by_metric["accuracy"]["ci"]["high"]) == pytest.approx(
        (ci.low, ci.high))
    md = (tmp_path / "compare.md").read_text()
    assert "DeLong" in md and "McNemar" in md and "](compare_roc.png)" in md and "| AUROC |" in md
    assert result["metrics_a"]["auroc"] == pytest.approx(expected.details["auc_a"])


def test_each_model_gets_its_own_threshold_on_val(two_checkpoints: tuple[Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = two_checkpoints
    result = run_compare(a, b, tmp_path, monkeypatch, "threshold=youden")
    points = [result["models"][k]["operating_point"] for k in ("A", "B")]
    assert all(p["method"] == "youden" and p["chosen_on"] == "val" for p in points)
    rows = list(csv.DictReader((tmp_path / "compare_predictions.csv").open()))
    labels = np.array([int(r["true_label"]) for r in rows])
    pa, pb = (np.array([float(r[k]) for r in rows]) for k in ("prob_a", "prob_b"))
    ta, tb = (result["models"][k]["threshold"] for k in ("A", "B"))
    assert result["mcnemar"]["p_value"] == pytest.approx(mcnemar_test((pa >= ta) == labels,
                                                                      (pb >= tb) == labels).p_value)


def test_different_images_are_refused(two_checkpoints: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = two_checkpoints
    other_root = make_folder(tmp_path / "other", per_class=3)
    b = train_tiny(other_root, tmp_path / "b", ["seed=3"])
    with pytest.raises(UserError, match="not scored on the same test images.*data.root=ROOT"):
        run_compare(a, b, tmp_path / "out", monkeypatch)
    with pytest.raises(UserError, match="Pass the two checkpoints"):
        compare.run(compose_config("compare", [f"ckpt={a}"]))


def test_common_threshold_map_keeps_decisions_and_ranking() -> None:
    rng = np.random.default_rng(0)
    probs = np.r_[rng.random(500), 0.0, 1.0, 0.3]
    for t in (0.0, 0.3, 0.5, 0.91, 1.0):
        q = compare._to_common_threshold(probs, t)
        assert np.array_equal(q >= 0.5, probs >= t)
        order = np.argsort(probs, kind="stable")
        assert np.all(np.diff(q[order]) >= 0)


def test_compare_scores_clusters_by_groups() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    pa = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    pb = np.clip(labels * 0.2 + rng.random(200) * 0.8, 0, 1)
    groups = [f"p{i // 5}" for i in range(200)]
    clustered = compare.compare_scores(labels, pa, pb, 0.5, 0.4, groups, n_resamples=200)
    assert clustered["clustered_by_groups"] and "40 groups" in clustered["differences"][0]["ci"]["method"]
    assert clustered["delong"]["p_value"] == pytest.approx(delong_test(labels, pa, pb).p_value)
    # With groups the clustered tests are primary and named; the image-level ones stay beside them.
    rows = {row["metric"]: row for row in clustered["differences"]}
    cdl = clustered_delong_test(labels, pa, pb, groups)
    cmn = clustered_mcnemar_test((pa >= 0.5) == labels, (pb >= 0.4) == labels, groups)
    assert rows["auroc"]["p_value"] == pytest.approx(cdl.p_value) and "Obuchowski" in rows["auroc"]["test"]
    assert rows["accuracy"]["p_value"] == pytest.approx(cmn.p_value) and "Durkalski" in rows["accuracy"]["test"]
    assert rows["auroc"]["image_level_p_value"] == pytest.approx(delong_test(labels, pa, pb).p_value)
    assert "not independent" in clustered["primary_tests"]["why"] and clustered["n_groups"] == 40
    plain = compare.compare_scores(labels, pa, pb, 0.5, 0.4, None, n_resamples=200)
    assert plain["clustered_delong"] is None and "DeLong test for correlated" in plain["primary_tests"]["auroc"]
    assert {row["metric"]: row for row in plain["differences"]}["auroc"]["image_level_test"] is None


def test_compare_table_says_which_test_is_primary_and_prints_no_zero_width_interval() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(rng.integers(0, 2, 30), 4)
    labels[:4], labels[4:8] = 0, 1
    pa = np.clip(labels * 0.4 + rng.random(120) * 0.6, 0, 1)
    groups = [f"p{i // 4}" for i in range(120)]
    result = compare.compare_scores(labels, pa, pa.copy(), 0.5, 0.5, groups, n_resamples=200)
    scores = compare._Scores("A", Path("a.ckpt"), Path("root"), [], labels, pa, 0.5, "fixed", {})
    md = compare._markdown(scores, scores, result, "test")
    assert "primary tests: clustered DeLong" in md and "image-level p (not primary)" in md
    # The same model twice: every difference is 0 in every resample, which is no interval of zero width.
    assert "[+0.0000, +0.0000]" not in md and "every resample gave the same value" in md
