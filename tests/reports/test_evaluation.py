"""eval.py's report, predict and export, on one tiny trained run."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.models.export import export_model, run_exported
from bcc_lightning.reports.gradcam import compute_cams, find_target_layer, overlay
from bcc_lightning.reports.operating_point import choose_threshold
from bcc_lightning.tasks import evaluate as evaluation
from bcc_lightning.tasks.predict import predict
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config

REPORT_FILES = ["metrics.json", "classification_report.txt", "confusion_matrix.png", "roc_curve.png", "pr_curve.png",
                "calibration.png", "training_curves.png", "predictions_grid.png", "predictions.csv", "report.md"]


def best_ckpt(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["checkpoint"])


def run_eval(run: Path, outdir: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(outdir)
    cfg = compose_config("eval", [f"ckpt={best_ckpt(run)}", "data.num_workers=0", "trainer.accelerator=cpu",
                                  "trainer.precision=32-true", *overrides])
    return evaluation.run(cfg)


def test_report_files_and_numbers(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_eval(trained_run, tmp_path, monkeypatch, "logger=tensorboard")
    for name in REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0, name
    cams = sorted((tmp_path / "gradcam").glob("*.png"))
    assert cams
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    labels = np.array([r["true_label"] == "malignant" for r in rows], dtype=int)
    probs = np.array([float(r["prob_malignant"]) for r in rows])
    m = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    preds = (probs >= m["threshold"]).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, preds, labels=[0, 1]).ravel()
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs), abs=1e-6)
    assert m["auprc"] == pytest.approx(skm.average_precision_score(labels, probs), abs=1e-6)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(labels, probs), abs=1e-6)
    for key in ("balanced_accuracy", "specificity", "f1", "ece"):
        assert m[key] is not None
    for key in ("accuracy", "recall", "auroc", "brier"):  # every metric has a 95 % CI naming its method
        ci = m["intervals"][key]
        assert ci["method"] and (ci["low"] is None or ci["low"] - 1e-9 <= m[key] <= ci["high"] + 1e-9), key
    assert "Wilson" in m["intervals"]["accuracy"]["method"]
    assert "95 % confidence intervals" in (tmp_path / "classification_report.txt").read_text()
    assert result["checkpoint"] == str(best_ckpt(trained_run)) and result["split"] == "test"
    md = (tmp_path / "report.md").read_text()
    assert "SYNTHETIC" in md and "](gradcam/" in md and "95 % CI (method)" in md
    assert "**Leakage:" not in md  # the audit found no copies: no warning banner
    for name in ("confusion_matrix.png", "training_curves.png", "predictions_grid.png", "calibration.png"):
        assert f"]({name})" in md
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # The training run wrote the same report for its best checkpoint.
    assert (trained_run / "test" / "report.md").is_file() and (trained_run / "history.csv").is_file()


def test_threshold_chosen_on_validation(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_eval(trained_run, tmp_path, monkeypatch, "threshold=youden")
    assert result["threshold_method"].startswith("youden") and result["val_metrics"] is not None
    # Recompute the choice from the model's own validation probabilities.
    model = load_checkpoint(best_ckpt(trained_run))
    from bcc_lightning.data.datamodule import BCCDataModule

    dm = BCCDataModule(result["data_root"], model.preprocess, batch_size=64, num_workers=0)
    with torch.no_grad():
        val_probs = torch.cat([torch.sigmoid(model(x)) for x, _ in dm.loader("val")]).numpy()
    expected = choose_threshold(dm.dataset("val").labels, val_probs, "youden").threshold
    assert result["metrics"]["threshold"] == pytest.approx(expected, abs=1e-5)
    assert result["val_metrics"]["threshold"] == result["metrics"]["threshold"]
    point = json.loads((tmp_path / "metrics.json").read_text())["operating_point"]
    assert point["method"] == "youden" and point["chosen_on"] == "val"
    assert point["threshold"] == result["metrics"]["threshold"]
    sens = run_eval(trained_run, tmp_path / "sens", monkeypatch, "threshold=sensitivity@0.95",
                    "report.cam_per_group=0", "report.grid_size=0")
    assert sens["operating_point"]["method"] == "sensitivity@0.95" and sens["val_metrics"]["recall"] >= 0.95


def test_tta_runs_and_changes_probabilities(trained_run: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run_eval(trained_run, tmp_path / "plain", monkeypatch, "report.cam_per_group=0", "report.grid_size=0")
    tta = run_eval(trained_run, tmp_path / "tta", monkeypatch, "tta=true", "report.cam_per_group=0",
                   "report.grid_size=0")
    assert tta["tta"] is True
    read = [[float(r["prob_malignant"]) for r in csv.DictReader((tmp_path / d / "predictions.csv").open())]
            for d in ("plain", "tta")]
    assert not np.allclose(read[0], read[1])


def test_fast_path_forced_on_gives_eagers_report(trained_run: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """inference.fast=true (ONNX Runtime, fp32) scores val and test as the eager fp32 model does, TTA included."""
    from bcc_lightning.models import inference

    common = ["tta=true", "threshold=youden", "report.cam_per_group=0", "report.grid_size=0"]
    eager = run_eval(trained_run, tmp_path / "eager", monkeypatch, "inference.fast=false", *common)
    built = []
    real = inference.OnnxRunner

    class Spy(real):
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(inference, "OnnxRunner", Spy)
    fast = run_eval(trained_run, tmp_path / "fast", monkeypatch, "inference.fast=true", *common)
    assert built == [1]  # one session for the model, shared by the val and test splits
    read = [[float(r["prob_malignant"]) for r in csv.DictReader((tmp_path / d / "predictions.csv").open())]
            for d in ("eager", "fast")]
    np.testing.assert_allclose(read[1], read[0], atol=1e-4)
    assert fast["metrics"]["threshold"] == pytest.approx(eager["metrics"]["threshold"], abs=1e-4)


def test_bad_threshold_and_split(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="threshold"):
        run_eval(trained_run, tmp_path, monkeypatch, "threshold=1.5")
    with pytest.raises(UserError, match="fraction, not a percentage"):
        run_eval(trained_run, tmp_path, monkeypatch, "threshold=sensitivity@95")
    with pytest.raises(UserError, match="split"):
        run_eval(trained_run, tmp_path, monkeypatch, "split=holdout")
    with pytest.raises(UserError, match="no '(test|train)' folder"):  # the leakage audit scans train first
        run_eval(trained_run, tmp_path, monkeypatch, f"data.root={tmp_path}")


def test_gradcam_explains_the_predicted_class(trained_run: Path, demo_root: Path) -> None:
    model = load_checkpoint(best_ckpt(trained_run))
    from bcc_lightning.data.preprocess import to_pixels

    path = next((demo_root / "test" / "M").glob("*.png"))
    image = Image.open(path).convert("RGB")
    x = to_pixels(image, model.preprocess).unsqueeze(0)  # uint8, as evaluation and predict pass them
    layer = find_target_layer(model, model.backbone_arch, model.preprocess.img_size)
    as_malignant = compute_cams(model, x, [1], layer)[0]
    as_benign = compute_cams(model, x, [0], layer)[0]
    assert as_malignant.shape == (model.preprocess.img_size, model.preprocess.img_size)
    assert not np.allclose(as_malignant, as_benign)
    assert overlay(image, as_malignant).size == image.size


def test_predict_skips_bad_files(trained_run: Path, demo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for p in list((demo_root / "test" / "B").glob("*.png"))[:2] + list((demo_root / "test" / "M").glob("*.png"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows = predict(best_ckpt(trained_run), folder, tmp_path / "preds.csv", threshold=0.5, num_workers=0,
                   accelerator="cpu", precision="32-true", cam=True)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert "not a readable image" in by_name["corrupt.png"]["error"] and by_name["corrupt.png"]["pred_label"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == 4 and all(0 <= r["prob_malignant"] <= 1 for r in good)
    written = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert [r["path"] for r in written] == [r["path"] for r in rows]
    assert len(list((tmp_path / "cams").glob("*.png"))) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="No images"):
        predict(best_ckpt(trained_run), tmp_path / "empty", tmp_path / "x.csv")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(trained_run: Path, tmp_path: Path, fmt: str) -> None:
    ckpt = best_ckpt(trained_run)
    out = tmp_path / f"model.{fmt}"
    sidecar = export_model(ckpt, fmt, out, check=True)
    assert sidecar["parity"]["max_abs_diff"] < 1e-4
    meta = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    assert meta["input"]["shape"][2] == 64 and meta["class_names"] == ["benign", "malignant"]
    assert meta["synthetic_training_data"] is True and meta["source_checkpoint_sha256"]
    assert meta["initialisation"] == "random" and meta["input"]["stain_norm"] is None
    # The exported file alone, on a real image prepared as the sidecar says, matches the checkpoint's model.
    model = load_checkpoint(ckpt)
    from bcc_lightning.data.imageio import load_rgb
    from bcc_lightning.data.preprocess import to_pixels

    image = load_rgb(next(Path(meta["trained_on"], "test", "M").glob("*.png")))
    resized = np.asarray(image.resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    batch = np.stack([resized.transpose(2, 0, 1)] * 3)  # dynamic batch of 3
    exported = run_exported(out, fmt, batch)
    with torch.no_grad():
        reference = torch.sigmoid(model(to_pixels(image, model.preprocess).unsqueeze(0))).item()
    assert exported.shape == (3,) and exported[0] == pytest.approx(reference, abs=2e-3)


def test_group_rules_label_and_score_alike() -> None:
    from bcc_lightning.reports.evaluation import group_scores

    groups = ["p1", "p1", "p2", "p2", "p3"]
    labels = np.array([1, 1, 0, 0, 0])
    probs = np.array([0.9, 0.2, 0.1, 0.7, 0.3])
    y, s = group_scores(groups, labels, probs, "any", 0.5)
    assert y.tolist() == [1, 0, 0] and s.tolist() == pytest.approx([0.9, 0.7, 0.3])
    y, s = group_scores(groups, labels, probs, "mean", 0.5)
    assert s.tolist() == pytest.approx([0.55, 0.4, 0.3])
    y, s = group_scores(groups, labels, probs, "majority", 0.5)
    assert s.tolist() == pytest.approx([0.5, 0.5, 0.0])
    with pytest.raises(UserError, match="group_rule"):
        group_scores(groups, labels, probs, "median", 0.5)


def test_report_shows_leakage_banner_and_undefined_rates(tmp_path: Path) -> None:
    from bcc_lightning.reports.report import write_metric_files, write_report_md

    metrics, figures = write_metric_files(tmp_path, [0, 0, 0], [0.1, 0.6, 0.2], 0.5, "test")
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    assert metrics["recall"] is None and metrics["intervals"]["recall"]["low"] is None
    result = {"model": "m", "checkpoint": "c", "data_root": "r", "split": "test", "threshold_method": "fixed",
              "tta": False, "metrics": metrics, "leakage": {"test_with_copy_in_train": 2, "n_test": 3}}
    md = write_report_md(tmp_path, result, [], [], "").read_text()
    assert "**Leakage: 2 of 3 test images have a near-duplicate in train: these test metrics are inflated.**" in md
    assert "n/a (no malignant images)" in md
    clean = write_report_md(tmp_path, {**result, "leakage": {"test_with_copy_in_train": 0}}, [], [], "").read_text()
    assert "Leakage audit: no test or validation image" in clean


def _zero_width(text: str) -> list[str]:
    """Printed intervals [a, a] (any precision, optional sign) in a report."""
    import re

    return [m.group(0) for m in re.finditer(r"\[([+-]?\d+\.\d+), ([+-]?\d+\.\d+)\]", text)
            if float(m.group(1)) == float(m.group(2))]


def test_few_groups_are_said_in_report_and_card(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from bcc_lightning.reports.card import build_card, card_markdown
    from bcc_lightning.reports.report import write_metric_files, write_report_md

    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(5)], 8)
    labels = (groups != "p0").astype(int)  # all benign test images come from one patient
    probs = np.clip(0.35 * labels + rng.random(40) * 0.65, 0, 1)
    metrics, figures = write_metric_files(tmp_path, labels, probs, 0.5, "test", groups=groups)
    for fig in figures.values():
        plt.close(fig)
    spec = metrics["intervals"]["specificity"]
    assert spec["low"] is None and "one group" in spec["reason"] and spec["n_groups"] == 1
    assert metrics["intervals"]["recall"]["n_groups"] == 4 and metrics["intervals"]["recall"]["unreliable"]
    assert metrics["intervals"]["accuracy"]["groups"] == {"benign": 1, "malignant": 4}
    result = {"model": "m", "checkpoint": "c", "data_root": "r", "split": "test", "threshold_method": "fixed",
              "tta": False, "metrics": metrics,
              "group_metrics": {**metrics, "n": 5, "rule": "any"},
              "operating_point": {"threshold": 0.5, "method": "youden", "group_threshold_note": "all 3 validation "
                                  "groups are malignant: the group metrics use the image threshold instead."}}
    md = write_report_md(tmp_path, result, [], [], "").read_text()
    assert "n/a (one group: resampling it cannot move the number" in md and "unreliable: 4 group(s)" in md
    assert "group metrics use the image threshold instead" in md
    card = card_markdown(build_card({}, result, None))
    assert "unreliable: 4 groups" in card and "n/a (one group" in card
    assert not _zero_width(md) and not _zero_width(card)
    # A model that calls every image malignant: sensitivity 1.0 and balanced accuracy 0.5 with real intervals.
    labels = (~np.isin(groups, ["p0", "p1"])).astype(int)  # two benign patients this time
    everything, figures = write_metric_files(tmp_path, labels, np.ones(40), 0.5, "test", groups=groups)
    for fig in figures.values():
        plt.close(fig)
    sens, ba = everything["intervals"]["recall"], everything["intervals"]["balanced_accuracy"]
    assert everything["recall"] == 1.0 and sens["low"] < 1.0 == sens["high"]
    assert ba["low"] < 0.5 < ba["high"]
    assert everything["intervals"]["specificity"]["high"] > 0 == everything["specificity"]
    md = write_report_md(tmp_path, {**result, "metrics": everything}, [], [], "").read_text()
    assert not _zero_width(md) and not _zero_width((tmp_path / "classification_report.txt").read_text())


def test_saturated_logits_keep_auroc_through_temperature_and_thresholds_stay_in_range() -> None:
    from bcc_lightning.reports.evaluation import Scored
    from bcc_lightning.reports.metrics import compute_metrics
    from bcc_lightning.reports.operating_point import apply_temperature, view_logit
    from bcc_lightning.reports.statistics import metric_intervals

    def metric_intervals_of(y: np.ndarray, p: np.ndarray, s: np.ndarray) -> dict:
        return metric_intervals(y, p, scores=s, n_resamples=200)

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    # Over-confident logits out to +-40: float32 sigmoid would tie everything above ~16.7.
    # Even float64 sigmoid rounds to 1.0 above ~36.7 and is coarse from ~30: AUROC ranks the logits.
    logits = np.clip(np.where(labels == 1, 26.0, 20.0) + rng.normal(0, 8, 400), -40, 40)
    logits[:4], labels[:4] = [40.0, -40.0, 39.5, 38.0], [1, 0, 0, 1]
    logits = logits.astype(np.float32).astype(np.float64)  # what a model's fp32 head gives
    scored = Scored([Path(f"{i}.png") for i in range(400)], labels, torch.tensor(logits[:, None], dtype=torch.float32))
    temperature = 4.0  # (fit_temperature would end on its bound of 20 for logits this over-confident)
    before, after = scored.probs(1.0), scored.probs(temperature)
    assert before.dtype == np.float64
    reference = skm.roc_auc_score(labels, logits)
    auroc_before = compute_metrics(labels, before, scores=scored.scores(1.0))["auroc"]
    auroc_after = compute_metrics(labels, after, scores=scored.scores(temperature))["auroc"]
    assert auroc_before == auroc_after == pytest.approx(reference, abs=1e-12)
    assert compute_metrics(labels, before)["auroc"] != pytest.approx(reference, abs=1e-6)  # the ties it avoids
    ci = metric_intervals_of(labels, before, scored.scores(1.0))
    assert ci["auroc"].estimate == auroc_before
    tta = np.c_[logits, logits - 1.0, logits + 0.5]
    assert np.all(np.diff(view_logit(tta, 2.0)[np.argsort(apply_temperature(tta, 2.0))]) >= 0)  # same order
    for method in ("youden", "f1", "sensitivity@0.99", "specificity@0.999", "specificity@0.5"):
        for probs in (before, after, np.where(labels == 0, 1.0, before)):  # benign images at exactly 1.0
            point = choose_threshold(labels, probs, method)
            assert 0.0 <= point.threshold <= 1.0, (method, point.threshold)
    stuck = choose_threshold(labels, np.where(labels == 0, 1.0, before), "specificity@0.999")
    assert stuck.threshold == 1.0 and "out of reach" in stuck.note and stuck.specificity < 0.999


def test_non_finite_probabilities_name_the_images(trained_run: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from bcc_lightning.reports import evaluation as report_evaluation

    monkeypatch.setattr(report_evaluation, "predict_view_logits",
                        lambda model, batches, *a, **k: torch.full((sum(len(b) for b in batches), 1), float("nan")))
    with pytest.raises(UserError, match=r"NaN or infinite probabilities for \d+ test image\(s\), e.g. .*\.png"):
        run_eval(trained_run, tmp_path, monkeypatch, "report.cam_per_group=0", "report.grid_size=0")


def test_export_threshold_from_metrics_json(tmp_path: Path) -> None:
    from bcc_lightning.reports.operating_point import resolve_operating_point

    assert resolve_operating_point(0.3) == (0.3, {"threshold": 0.3, "method": "fixed", "chosen_on": None})
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"operating_point": {"threshold": 0.42, "method": "youden", "chosen_on": "val"}}))
    threshold, point = resolve_operating_point(str(metrics))
    assert threshold == 0.42 and point["method"] == "youden" and point["chosen_on"] == "val"
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(UserError, match="no operating_point"):
        resolve_operating_point(str(tmp_path / "old.json"))
    with pytest.raises(UserError, match="neither a number"):
        resolve_operating_point("youden")
    with pytest.raises(UserError, match="must lie in"):
        resolve_operating_point(1.5)
    metrics.write_text(json.dumps({"operating_point": {"threshold": 0.4, "temperature": -1}}))
    with pytest.raises(UserError, match="not a positive number"):
        resolve_operating_point(str(metrics))
