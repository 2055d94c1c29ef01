"""The model that travels: `bcc-eval ... save_to=model.ckpt` writes the evaluated operating point into a checkpoint,
and predict, export (then ONNX Runtime) and serve apply it from a copy of that file alone, in another folder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from bcc_lightning.data.preprocess import read_pixels
from bcc_lightning.models.checkpoint import DEPLOYMENT_KEY, load_checkpoint, read_checkpoint, resolve_tta
from bcc_lightning.models.export import run_exported
from bcc_lightning.prediction.folder import predict
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.tasks import evaluate as evaluate_task
from bcc_lightning.tasks import export as export_task
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config, run_in
from tests.serving import best_ckpt, running_server

QUIET = ["data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true", "report.cam_per_group=0",
         "report.grid_size=0", "data.audit=off"]


def sensitivity(labels: list[int], probs: list[float], threshold: float) -> float:
    predicted = np.asarray(probs) >= threshold
    positives = np.asarray(labels) == 1
    return float((predicted & positives).sum() / positives.sum())


@pytest.fixture(scope="module")
def shipped(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Evaluate with TTA, sensitivity@0.95 and temperature scaling, save the model, and move it alone elsewhere."""
    work = tmp_path_factory.mktemp("deploy")
    saved = work / "eval_here" / "model.ckpt"
    saved.parent.mkdir()
    cfg = compose_config("eval", [f"ckpt={best_ckpt(trained_run)}", "tta=true", "threshold=sensitivity@0.95",
                                  "calibrate=temperature", f"save_to={saved}", *QUIET])
    result = run_in(work / "eval_run", evaluate_task.run, cfg)
    moved = work / "elsewhere" / "shipped.ckpt"
    moved.parent.mkdir()
    shutil.move(saved, moved)
    rows = list(csv.DictReader(next((work / "eval_run").rglob("predictions.csv")).open()))
    return {"result": result, "ckpt": moved, "eval_rows": rows}


def test_the_evaluated_point_travels_to_predict_and_export(shipped: dict, demo_root: Path,
                                                                 tmp_path: Path) -> None:
    result, ckpt = shipped["result"], shipped["ckpt"]
    point = read_checkpoint(ckpt)[DEPLOYMENT_KEY]
    assert point["tta"] is True and point["method"] == "sensitivity@0.95" and point["chosen_on"] == "val"
    assert point["temperature"] == result["operating_point"]["temperature"] != 1.0
    assert point["threshold"] == result["metrics"]["threshold"]
    assert point["provenance"]["metrics"]["recall"] == result["metrics"]["recall"]
    assert point["preprocessing"]["img_size"] == 64 and point["group_rule"] == "any"
    evaluated = {row["path"]: float(row["prob_malignant"]) for row in shipped["eval_rows"]}
    test_sensitivity = result["metrics"]["recall"]
    paths = sorted((demo_root / "test").rglob("*.png"))
    keys = [p.relative_to(demo_root).as_posix() for p in paths]
    labels = [int(p.parent.name == "M") for p in paths]
    expected = [evaluated[k] for k in keys]

    # predict, threshold=auto (the default) and tta=auto: the point's threshold, temperature and 8 views
    rows = predict(ckpt, demo_root / "test", tmp_path / "p.csv", num_workers=0, accelerator="cpu",
                   precision="32-true")
    by_key = {Path(r["path"]).relative_to(demo_root).as_posix(): r for r in rows}
    probs = [by_key[k]["prob_malignant"] for k in keys]
    assert probs == pytest.approx(expected, abs=1e-5)
    assert all(by_key[k]["tta_std"] != "" for k in keys)  # 8 views were averaged
    assert {r["threshold"] for r in rows} == {point["threshold"]} and str(ckpt) in rows[0]["threshold_method"]
    assert sensitivity(labels, probs, point["threshold"]) == test_sensitivity

    # export: the temperature and the 8 views inside the graph; ONNX Runtime on the same pixels
    sidecar = run_in(tmp_path, export_task.run, compose_config("export", [f"ckpt={ckpt}", "out=m.onnx",
                                                                          "input=uint8_nhwc"]))
    assert sidecar["tta_views"] == 8 and sidecar["threshold"] == point["threshold"]
    pre = load_checkpoint(ckpt).preprocess
    batch = torch.stack([read_pixels(p, pre) for p in paths]).permute(0, 2, 3, 1).contiguous().numpy()
    onnx_probs = run_exported(tmp_path / "m.onnx", "onnx", batch)
    assert onnx_probs.tolist() == pytest.approx(expected, abs=1e-5)
    assert sensitivity(labels, onnx_probs.tolist(), sidecar["threshold"]) == test_sensitivity


@pytest.mark.slow  # a bcc-serve process (two spawned processes import torch): minutes on a busy 2-core machine
def test_the_evaluated_point_travels_to_serve(shipped: dict, demo_root: Path, tmp_path: Path) -> None:
    ckpt, test_sensitivity = shipped["ckpt"], shipped["result"]["metrics"]["recall"]
    point = read_checkpoint(ckpt)[DEPLOYMENT_KEY]
    evaluated = {row["path"]: float(row["prob_malignant"]) for row in shipped["eval_rows"]}
    paths = sorted((demo_root / "test").rglob("*.png"))
    labels = [int(p.parent.name == "M") for p in paths]
    expected = [evaluated[p.relative_to(demo_root).as_posix()] for p in paths]
    # serve over real HTTP, threshold and TTA from the checkpoint
    with running_server(ckpt, tmp_path / "serve", "trainer.precision=32-true", "max_batch_size=4") as url:
        served = []
        for start in range(0, len(paths), 8):
            files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths[start:start + 8]]
            response = requests.post(f"{url}/predict", files=files, timeout=120)
            assert response.status_code == 200, response.text
            served += response.json()
        card = requests.get(f"{url}/model", timeout=60).json()
    assert [r["prob_malignant"] for r in served] == pytest.approx(expected, abs=1e-5)
    assert all("uncertainty" in r and r["threshold"] == point["threshold"] for r in served)
    assert sensitivity(labels, [r["prob_malignant"] for r in served], point["threshold"]) == test_sensitivity
    assert card["serving"]["tta"] is True and card["serving"]["temperature"] == point["temperature"]


def test_tta_against_the_point_is_refused_and_a_number_still_works(shipped: dict, demo_root: Path,
                                                                   tmp_path: Path) -> None:
    ckpt = shipped["ckpt"]
    _, point = resolve_operating_point("auto", ckpt)
    assert resolve_tta("auto", point) is True
    with pytest.raises(UserError, match="chosen with TTA"):
        resolve_tta(False, point)
    with pytest.raises(UserError, match="chosen with TTA"):
        predict(ckpt, demo_root / "test" / "M", tmp_path / "x.csv", tta=False, num_workers=0, accelerator="cpu")
    with pytest.raises(UserError, match="chosen with TTA"):
        export_task.run(compose_config("export", [f"ckpt={ckpt}", f"out={tmp_path / 'x.onnx'}", "tta=false"]))
    # the user's own number on single views is their call
    rows = predict(ckpt, demo_root / "test" / "M", tmp_path / "n.csv", threshold=0.5, tta=False, num_workers=0,
                   accelerator="cpu", precision="32-true")
    assert {r["threshold"] for r in rows} == {0.5} and all(r["tta_std"] in ("", None) for r in rows)
    # save_to never overwrites: not the evaluated checkpoint, not an existing file
    for target in (ckpt, best_ckpt_of(shipped)):
        with pytest.raises(UserError, match="never overwritten"):
            evaluate_task.run(compose_config("eval", [f"ckpt={best_ckpt_of(shipped)}", f"save_to={target}",
                                                      *QUIET]))


def best_ckpt_of(shipped: dict) -> Path:
    return Path(shipped["result"]["checkpoint"])


def test_a_moved_checkpoint_without_a_point_stops_for_auto(trained_run: Path, demo_root: Path,
                                                           tmp_path: Path) -> None:
    moved = tmp_path / "somewhere" / "best.ckpt"
    moved.parent.mkdir()
    shutil.copy(best_ckpt(trained_run), moved)
    for call in (lambda: predict(moved, demo_root / "test", tmp_path / "p.csv", num_workers=0, accelerator="cpu"),
                 lambda: export_task.run(compose_config("export", [f"ckpt={moved}", f"out={tmp_path / 'm.onnx'}"]))):
        with pytest.raises(UserError, match=r"carries no evaluated operating point.*save_to=model\.ckpt"):
            call()
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.onnx").exists()
