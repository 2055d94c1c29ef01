"""predict and export share one operating point (threshold=auto: the point the checkpoint carries | number |
metrics.json) with its temperature; evaluation's calibrate=temperature; TTA spread and the referral curve."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.imageio import load_rgb
from bcc_lightning.data.preprocess import to_pixels
from bcc_lightning.models.checkpoint import DEPLOYMENT_KEY, load_checkpoint, read_checkpoint, write_deployable
from bcc_lightning.models.export import run_exported
from bcc_lightning.prediction.folder import predict
from bcc_lightning.reports.evaluation import EvalSettings, evaluate
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.tasks import export as export_task
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config


def best_ckpt(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["checkpoint"])


def copy_run(ckpt: Path, run: Path, scale: float = 1.0, point: dict | None = None) -> Path:
    """A copy of the checkpoint (<run>/checkpoints/model.ckpt); scale multiplies the last head layer, i.e. every
    logit, to make an over-confident model; `point` is written into it as bcc-eval's save_to does."""
    target = run / "checkpoints" / "model.ckpt"
    target.parent.mkdir(parents=True)
    checkpoint = read_checkpoint(ckpt)
    if scale != 1.0:
        last = [k for k in checkpoint["state_dict"] if k.startswith("head.") and k.endswith(".weight")][-1]
        for key in (last, last[: -len("weight")] + "bias"):
            if key in checkpoint["state_dict"]:
                checkpoint["state_dict"][key] = checkpoint["state_dict"][key] * scale
    if point is None:
        torch.save(checkpoint, target)
    else:
        source = run / "source.ckpt"
        torch.save(checkpoint, source)
        write_deployable(source, checkpoint, point, target)
    return target


def images(demo_root: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("B", "M"):
        for p in sorted((demo_root / "test" / name).glob("*.png"))[:3]:
            shutil.copy(p, folder / p.name)
    return folder


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_auto_uses_the_point_the_checkpoint_carries_and_a_number_wins(trained_run: Path, demo_root: Path,
                                                                        tmp_path: Path) -> None:
    folder = images(demo_root, tmp_path / "in")
    # No point in the checkpoint: a clear stop that says how to get one, not a silent 0.5.
    plain = copy_run(best_ckpt(trained_run), tmp_path / "plain")
    with pytest.raises(UserError, match="carries no evaluated operating point"):
        predict(plain, folder, tmp_path / "none.csv", num_workers=0, accelerator="cpu", precision="32-true")
    with pytest.raises(UserError, match="threshold=auto reads the operating point from the checkpoint"):
        resolve_operating_point("auto", None)
    # An evaluation beside the checkpoint is not read: nothing depends on where a file lies.
    (tmp_path / "plain" / "test").mkdir()
    (tmp_path / "plain" / "test" / "metrics.json").write_text(json.dumps({"operating_point": {"threshold": 0.37}}))
    with pytest.raises(UserError, match="save_to=model.ckpt"):
        resolve_operating_point("auto", plain)
    point = {"threshold": 0.37, "method": "youden", "chosen_on": "val", "temperature": 2.0, "tta": False}
    ckpt = copy_run(best_ckpt(trained_run), tmp_path / "run", point=point)
    assert read_checkpoint(ckpt)[DEPLOYMENT_KEY]["source_checkpoint_sha256"]
    assert "optimizer_states" not in read_checkpoint(ckpt)  # the deployable copy carries no training state
    auto = predict(ckpt, folder, tmp_path / "auto.csv", num_workers=0, accelerator="cpu", precision="32-true")
    written = read_rows(tmp_path / "auto.csv")
    assert {float(r["threshold"]) for r in written} == {0.37}
    assert "youden" in written[0]["threshold_method"] and "T = 2" in written[0]["threshold_method"]
    assert str(ckpt) in written[0]["threshold_method"]
    fixed = predict(ckpt, folder, tmp_path / "fixed.csv", threshold=0.3, num_workers=0, accelerator="cpu",
                    precision="32-true")
    assert {r["threshold"] for r in fixed} == {0.3} and fixed[0]["threshold_method"] == "fixed"
    # The temperature goes with the operating point: sigmoid(logit / 2) against the fixed threshold's T = 1.
    logits = np.log([r["prob_malignant"] for r in fixed]) - np.log1p(-np.array([r["prob_malignant"] for r in fixed]))
    assert [r["prob_malignant"] for r in auto] == pytest.approx(1 / (1 + np.exp(-logits / 2)), abs=1e-5)
    # export: auto picks up the same point, a number still wins.
    sidecar = export_task.run(compose_config("export", [f"ckpt={ckpt}", f"out={tmp_path / 'm.onnx'}"]))
    assert sidecar["threshold"] == 0.37 and sidecar["temperature"] == 2.0 and sidecar["tta_views"] == 1
    assert sidecar["operating_point"]["method"] == "youden" and sidecar["operating_point"]["source"]
    plain_export = export_task.run(compose_config("export", [f"ckpt={ckpt}", f"out={tmp_path / 'p.onnx'}",
                                                             "threshold=0.3", "check=false"]))
    assert plain_export["threshold"] == 0.3 and plain_export["temperature"] == 1.0
    with pytest.raises(UserError, match="neither a number"):
        resolve_operating_point("youden", ckpt)


def test_exported_probability_equals_predicts(trained_run: Path, demo_root: Path, tmp_path: Path) -> None:
    point = {"threshold": 0.4, "method": "f1", "chosen_on": "val", "temperature": 1.7, "tta": False}
    ckpt = copy_run(best_ckpt(trained_run), tmp_path / "run", point=point)
    folder = images(demo_root, tmp_path / "in")
    rows = predict(ckpt, folder, tmp_path / "p.csv", num_workers=0, accelerator="cpu", precision="32-true")
    export_task.run(compose_config("export", [f"ckpt={ckpt}", f"out={tmp_path / 'm.pt'}", "format=torchscript"]))
    pre = load_checkpoint(ckpt).preprocess
    batch = np.stack([to_pixels(load_rgb(Path(r["path"])), pre).numpy().astype(np.float32) / 255 for r in rows])
    exported = run_exported(tmp_path / "m.pt", "torchscript", batch)
    assert exported == pytest.approx([r["prob_malignant"] for r in rows], abs=1e-5)
    meta = json.loads((tmp_path / "m.pt.json").read_text())
    assert meta["temperature"] == 1.7 and "sigmoid(logit / 1.7)" in meta["outputs"]["prob_malignant"]


def noisy_root(demo_root: Path, root: Path) -> Path:
    """The demo data with a few labels swapped in val and test: a confident model is then over-confident."""
    shutil.copytree(demo_root, root)
    for split in ("val", "test"):
        for source, target in (("B", "M"), ("M", "B")):
            for path in sorted((root / split / source).glob("*.png"))[:1]:
                path.rename(root / split / target / f"swapped_{path.name}")
    return root


def test_temperature_calibration_travels_to_predict(trained_run: Path, demo_root: Path, tmp_path: Path) -> None:
    ckpt = copy_run(best_ckpt(trained_run), tmp_path / "run", scale=8.0)
    model = load_checkpoint(ckpt)
    root = noisy_root(demo_root, tmp_path / "noisy")
    dm = BCCDataModule(root, model.preprocess, batch_size=16, num_workers=0)
    outdir = tmp_path / "run" / "test"
    settings = EvalSettings(threshold="youden", calibrate="temperature", accelerator="cpu", precision="32-true",
                            report={"cam_per_group": 0, "grid_size": 0})
    result = evaluate(model, dm, outdir, settings, ckpt)
    point, calibration = result["operating_point"], result["calibration"]
    assert point["temperature"] > 1 and point["temperature"] == calibration["temperature"]
    assert calibration["val_ece_after"] < calibration["val_ece_before"]
    assert (outdir / "calibration_before_after.png").stat().st_size > 0
    md = (outdir / "report.md").read_text()
    assert "positive (malignant) class, 10 equal-width bins" in md and "](calibration_before_after.png)" in md
    assert "](referral_curve.png)" in md and (outdir / "referral_curve.png").stat().st_size > 0
    # predict with this evaluation's metrics.json applies its T.
    rows = predict(ckpt, root / "test" / "M", tmp_path / "p.csv", threshold=str(outdir / "metrics.json"),
                   num_workers=0, accelerator="cpu", precision="32-true")
    evaluated = {r["path"]: float(r["prob_malignant"]) for r in read_rows(outdir / "predictions.csv")}
    for row in rows:
        assert row["threshold"] == point["threshold"]
        key = Path(row["path"]).resolve().relative_to(root.resolve()).as_posix()
        assert row["prob_malignant"] == pytest.approx(evaluated[key], abs=2e-6)
    with pytest.raises(UserError, match="calibrate=temperature"):
        evaluate(model, dm, tmp_path / "bad", EvalSettings(calibrate="platt", accelerator="cpu"), ckpt)


def test_tta_spread_and_referral(trained_run: Path, demo_root: Path, tmp_path: Path) -> None:
    ckpt = best_ckpt(trained_run)
    folder = images(demo_root, tmp_path / "in")
    predict(ckpt, folder, tmp_path / "plain.csv", threshold=0.5, num_workers=0, accelerator="cpu",
            precision="32-true")
    assert all(r["tta_std"] == "" for r in read_rows(tmp_path / "plain.csv"))
    predict(ckpt, folder, tmp_path / "tta.csv", threshold=0.5, num_workers=0, accelerator="cpu",
            precision="32-true", tta=True)
    tta = read_rows(tmp_path / "tta.csv")
    spreads = [float(r["tta_std"]) for r in tta]
    assert all(0 <= s <= 0.5 for s in spreads) and max(spreads) > 0
    model = load_checkpoint(ckpt)
    dm = BCCDataModule(demo_root, model.preprocess, batch_size=16, num_workers=0)
    out = tmp_path / "eval"
    result = evaluate(model, dm, out, EvalSettings(tta=True, accelerator="cpu", precision="32-true",
                                                   report={"cam_per_group": 0, "grid_size": 0}), ckpt)
    assert result["referral"]["uncertainty"].startswith("TTA std")
    assert all(r["tta_std"] for r in read_rows(out / "predictions.csv"))
    points = result["referral"]["points"]
    assert points[0]["referred_fraction"] == 0 and points[0]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])
    assert points[-1]["kept"] < points[0]["kept"]


def test_referral_curve_refers_the_most_uncertain_first() -> None:
    from bcc_lightning.reports.report import referral_curve

    labels = np.array([1, 1, 0, 0])
    probs = np.array([0.9, 0.45, 0.55, 0.1])  # the two wrong ones sit next to the threshold
    points = referral_curve(labels, probs, 0.5, -np.abs(probs - 0.5), fractions=(0.0, 0.5))
    assert points[0]["accuracy"] == 0.5 and points[0]["recall"] == 0.5
    assert points[1] == {"referred_fraction": 0.5, "kept": 2, "accuracy": 1.0, "recall": 1.0}


def test_referral_section_reads_recall_and_the_old_sensitivity_key() -> None:
    """The curve's rows use the registry's key (recall); report.md shows the clinician's word, and a row from an older
    metrics.json (key sensitivity) still renders."""
    from bcc_lightning.reports.report import _referral_section

    old = {"referred_fraction": 0.1, "kept": 9, "accuracy": 0.75, "sensitivity": 0.625}
    new = {"referred_fraction": 0.0, "kept": 10, "accuracy": 0.5, "recall": 0.375}
    lines = _referral_section({"uncertainty": "TTA std", "points": [new, old]})
    assert "| referred | kept | accuracy | sensitivity |" in lines
    assert any("| 0% | 10 |" in line and "0.375" in line for line in lines)
    assert any("| 10% | 9 |" in line and "0.625" in line for line in lines)


def test_an_old_checkpoint_works_with_a_number_and_says_why_auto_cannot(tmp_path: Path) -> None:
    """tests/fixtures/old_checkpoint (written before the package was reorganised, evaluated beside nothing)."""
    from tests.conftest import REPO

    fixture = REPO / "tests" / "fixtures" / "old_checkpoint"
    with pytest.raises(UserError, match=r"older version of bcc-lightning.*save_to=model\.ckpt"):
        predict(fixture / "model.ckpt", fixture / "data" / "test", tmp_path / "p.csv", num_workers=0,
                accelerator="cpu")
    rows = predict(fixture / "model.ckpt", fixture / "data" / "test", tmp_path / "p.csv", threshold=0.5,
                   num_workers=0, accelerator="cpu", precision="32-true")
    assert rows and all(r["threshold"] == 0.5 and not r["error"] for r in rows)
    assert not list(fixture.rglob("*.csv.*")) and (fixture / "model.ckpt").is_file()  # the user's files untouched
