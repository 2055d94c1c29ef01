"""Grouped k-fold cross-validation: fold assignment, training on a fold, aggregation with statistics."""

import csv
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from bcc_lightning.data.layout import fold_samples
from bcc_lightning.reports.aggregate import _paired, describe, write_summary
from bcc_lightning.utils.errors import UserError
from tests.conftest import REPO, breakhis_tree, read_manifest, run_prepare, subprocess_env


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("folds")
    raw = breakhis_tree(base / "raw", patients=9, per_patient=3)
    run_prepare(raw, base / "out", group="breakhis", folds=3, holdout_test=True, augment_copies=1)
    return base


def test_folds_are_disjoint_by_group_stratified_and_deterministic(folded: Path) -> None:
    rows = read_manifest(folded / "out")
    place = defaultdict(set)
    per_fold = defaultdict(lambda: {"benign": 0, "malignant": 0})
    for row in rows:
        place[row["group"]].add(row["fold"] or "test")
        if row["fold"] and row["augmentation"] == "none":
            per_fold[row["fold"]][row["label"]] += 1
    assert all(len(p) == 1 for p in place.values())  # a patient is in one fold (or the test split) only
    assert set(per_fold) == {"0", "1", "2"}
    assert all(c["benign"] > 0 and c["malignant"] > 0 for c in per_fold.values())
    counts = [c["benign"] + c["malignant"] for c in per_fold.values()]
    assert max(counts) - min(counts) <= 3  # whole patients of 3 images each
    summary = json.loads((folded / "out" / "summary.json").read_text())
    assert summary["settings"]["folds"] == 3 and set(summary["folds"]) == {"0", "1", "2"}
    run_prepare(folded / "raw", folded / "again", group="breakhis", folds=3, holdout_test=True, augment_copies=1)
    assert read_manifest(folded / "again") == rows


def test_training_on_a_fold_uses_exactly_the_right_files(folded: Path) -> None:
    root = folded / "out"
    rows = read_manifest(root)
    for k in range(3):
        train = {p.relative_to(root).as_posix() for p, _ in fold_samples(root, "train", k)}
        val = {p.relative_to(root).as_posix() for p, _ in fold_samples(root, "val", k)}
        test = {p.relative_to(root).as_posix() for p, _ in fold_samples(root, "test", k)}
        assert val == {r["path"] for r in rows if r["fold"] == str(k) and r["augmentation"] == "none"}
        assert train == {r["path"] for r in rows if r["fold"] not in ("", str(k))}  # copies of fold k excluded
        assert test == {r["path"] for r in rows if r["split"] == "test"}
        assert not train & val and not train & test and not val & test
        assert all((root / p).is_file() for p in train | val | test)  # no copies were made


def test_fold_errors(folded: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="out of range: .* has 3 folds"):
        fold_samples(folded / "out", "train", 3)
    raw = breakhis_tree(tmp_path / "raw", patients=4, per_patient=2)
    run_prepare(raw, tmp_path / "plain", group="breakhis")
    with pytest.raises(UserError, match="prepared without folds"):
        fold_samples(tmp_path / "plain", "train", 0)
    with pytest.raises(UserError, match="needs fold assignments"):
        fold_samples(tmp_path / "raw", "train", 0)
    from bcc_lightning.data.layout import scan_split

    with pytest.raises(UserError, match="data.fold=k"):
        scan_split(folded / "out", "val")


def test_statistics_match_scipy() -> None:
    from scipy import stats

    values = [0.8, 0.9, 1.0]
    st = describe(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    # The t interval reaches 1.148: an accuracy cannot, so it is clipped to 1, saying so.
    assert high > 1 and (st["ci_low"], st["ci_high"]) == pytest.approx((low, 1.0))
    assert f"{high:.4f}" in st["ci_note"] and "clipped to [0, 1]" in st["ci_note"]
    assert "Student t" in st["ci_method"] and "not k-fold" in st["corrected_unavailable"]
    corrected = describe(values, (80.0, 20.0))["corrected"]
    assert corrected["low"] < low and corrected["high"] == 1.0  # wider: overlapping training sets
    assert "Nadeau-Bengio" in corrected["method"]


def _pair_jobs(diffs: list[float]) -> tuple[list[dict], list[dict]]:
    a = [{"fold": i, "overrides": {}, "test": {"accuracy": 0.5 + d}} for i, d in enumerate(diffs)]
    b = [{"fold": i, "overrides": {}, "test": {"accuracy": 0.5}} for i in range(len(diffs))]
    return a, b


def test_paired_comparison_uses_scipy_wilcoxon_and_corrected_t() -> None:
    from scipy import stats

    diffs = [0.03, -0.01, 0.04, 0.02, 0.05, -0.025, 0.06]  # no ties: scipy's exact table applies
    a, b = _pair_jobs(diffs)
    m = _paired(a, b, "a", "b", (600.0, 100.0))["metrics"]["accuracy"]
    assert m["wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs, method="exact").pvalue)
    assert "exact" in m["wilcoxon_method"] and "Nadeau-Bengio" in m["t_method"]
    d = np.asarray(diffs)
    se = d.std(ddof=1) * np.sqrt(1 / len(d) + 100 / 600)
    assert m["t_p"] == pytest.approx(2 * stats.t.sf(abs(d.mean() / se), len(d) - 1))
    plain = _paired(a, b, "a", "b", None)["metrics"]["accuracy"]
    assert "Student t" in plain["ci_method"] and "t_p" not in plain


def test_twenty_five_pairs_are_fast() -> None:
    import time

    rng = np.random.default_rng(0)
    a, b = _pair_jobs(list(rng.normal(0.01, 0.02, 25)))
    start = time.perf_counter()
    m = _paired(a, b, "a", "b", (400.0, 100.0))["metrics"]["accuracy"]
    assert time.perf_counter() - start < 2.0  # no 2^25 enumeration
    assert 0 <= m["wilcoxon_p"] <= 1 and m["ci_low"] < m["mean"] < m["ci_high"]


def _fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict, fold: int) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "metrics.json").write_text(json.dumps({"monitor": "val/loss", "best_monitor_value": 0.5, "fold": fold,
                                                  "metrics": metrics, "data_root": None}))


def test_aggregate_of_known_per_fold_metrics(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    accs = {"densenet121": [0.90, 0.80, 0.85], "mobilenetv2": [0.70, 0.75, 0.72]}
    num = 0
    for model, values in accs.items():
        for fold, acc in enumerate(values):
            _fake_job(sweep, num, [f"model={model}", f"data.fold={fold}"],
                      {"accuracy": acc, "auroc": acc + 0.05, "balanced_accuracy": acc}, fold)
            num += 1
    (sweep / "9" / ".hydra").mkdir(parents=True)  # a failed job
    result = write_summary(sweep)
    assert result["missing"] == ["9"]
    stats = result["aggregate"]["configs"]["model=densenet121"]["stats"]["accuracy"]
    assert stats["mean"] == pytest.approx(0.85) and stats["std"] == pytest.approx(np.std([0.9, 0.8, 0.85], ddof=1))
    assert stats["n"] == 3 and stats["ci_low"] <= 0.85 <= stats["ci_high"]
    comparison = result["aggregate"]["comparisons"][0]
    assert comparison["pairs"] == 3
    assert comparison["metrics"]["accuracy"]["differences"] == pytest.approx([0.20, 0.05, 0.13])
    text = (sweep / "aggregate.md").read_text()
    assert "0.850 ± 0.050" in text and "Missing: jobs 9" in text and "Wilcoxon" in text
    assert "Student t" in text and "training-set sizes unknown" in text  # no data root: no corrected interval
    rows = list(csv.DictReader((sweep / "aggregate.csv").open()))
    assert {r["config"] for r in rows} == {"model=densenet121", "model=mobilenetv2"}


def test_three_fold_sweep_end_to_end(tmp_path: Path) -> None:
    """prepare's folds, a real Hydra multirun over folds and two configurations, and the aggregate it writes. Three
    folds are the fewest that leave a training part (one test fold, one validation fold); one model at 32 px."""
    raw = breakhis_tree(tmp_path / "raw", patients=6, per_patient=3)
    run_prepare(raw, tmp_path / "cv", group="breakhis", folds=3, holdout_test=False)
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", f"data.root={tmp_path / 'cv'}", "model.pretrained=false",
         "data.fold=0,1,2", "optimizer.lr=1e-3,1e-2", "model.img_size=32", "trainer.max_epochs=1",
         "data.num_workers=0", "data.batch_size=8", "report.cam_per_group=0", "report.grid_size=0", "logger=none",
         "data.audit=off", f"hydra.sweep.dir={sweep}"], env=subprocess_env(), cwd=tmp_path, capture_output=True,
        text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    aggregate = json.loads((sweep / "aggregate.json").read_text())
    assert set(aggregate["configs"]) == {"optimizer.lr=0.001", "optimizer.lr=0.01"}
    for entry in aggregate["configs"].values():
        assert entry["runs"] == 3 and entry["protocol"] == "3-fold, no held-out test"
        assert entry["out_of_fold"]["n"] == 36  # every image once, pooled over the 3 test folds
        assert entry["out_of_fold"]["source"] == "test folds (out-of-fold)" and "fold_sizes" in entry
        assert entry["stats"]["accuracy"]["corrected"]["low"] is not None
        assert (sweep / entry["out_of_fold"]["figures"] / "roc_curve.png").is_file()
    assert aggregate["comparisons"][0]["pairs"] == 3
    assert "Paired comparisons" in (sweep / "aggregate.md").read_text()


def test_mixed_protocols_are_refused(tmp_path: Path, folded: Path) -> None:
    sweep = tmp_path / "sweep"
    raw = breakhis_tree(tmp_path / "raw", patients=6, per_patient=2)
    run_prepare(raw, tmp_path / "five", group="breakhis", folds=2, holdout_test=False)
    for num, root in enumerate((folded / "out", tmp_path / "five")):
        _fake_job(sweep, num, ["model=mobilenetv2", "data.fold=0", f"seed={num}"], {"accuracy": 0.8}, 0)
        data = json.loads((sweep / str(num) / "metrics.json").read_text())
        (sweep / str(num) / "metrics.json").write_text(json.dumps({**data, "data_root": str(root)}))
    with pytest.raises(UserError, match="Mixed protocols.*2-fold, no held-out test, 3-fold, held-out test"):
        write_summary(sweep)


def test_fold_intervals_stay_in_range_and_equal_values_give_none() -> None:
    near_one = describe([0.99, 1.0, 0.9], sizes=(100.0, 40.0))
    assert near_one["ci_high"] == 1.0 and "clipped to [0, 1]" in near_one["ci_note"]
    assert near_one["corrected"]["high"] == 1.0 and "clipped" in near_one["corrected"]["note"]
    same = describe([1.0, 1.0, 1.0])
    assert same["ci_low"] is None and "equal" in same["ci_reason"]  # never the zero-width [1.000, 1.000]


def test_pooled_out_of_fold_intervals_resample_patients(tmp_path: Path, folded: Path) -> None:
    from bcc_lightning.reports.predictions import prediction_rows, write_predictions

    root = folded / "out"
    sweep = tmp_path / "sweep"
    rng = np.random.default_rng(0)
    for fold in range(3):
        _fake_job(sweep, fold, ["model=mobilenetv2", f"data.fold={fold}"], {"accuracy": 0.8, "auroc": 0.9}, fold)
        data = json.loads((sweep / str(fold) / "metrics.json").read_text())
        (sweep / str(fold) / "metrics.json").write_text(json.dumps({**data, "data_root": str(root)}))
        samples = fold_samples(root, "val", fold)
        labels = [label for _, label in samples]
        probs = np.clip(0.3 * np.array(labels) + rng.random(len(labels)) * 0.7, 0, 1).tolist()
        paths = [p.resolve().relative_to(root.resolve()).as_posix() for p, _ in samples]
        write_predictions(sweep / str(fold) / "val_predictions.csv", prediction_rows(paths, probs, 0.5, labels))
    configs = write_summary(sweep)["aggregate"]["configs"]
    pooled = next(iter(configs.values()))["out_of_fold"]
    patients = {row["group"] for row in read_manifest(root) if row.get("fold") not in ("", None)}
    assert pooled["n_groups"] == len(patients) and "groups from manifest.csv" in pooled["interval_units"]
    accuracy = pooled["intervals"]["accuracy"]
    assert accuracy["method"].startswith("Wilson score with the design effect")
    assert accuracy["n_groups"] == len(patients) and accuracy["low"] < pooled["accuracy"] < accuracy["high"]
    assert pooled["intervals"]["auroc"]["n_groups"] is not None
    md = (sweep / "aggregate.md").read_text()
    assert "Wilson score with the design effect" in md and f"{len(patients)} groups from manifest.csv" in md
