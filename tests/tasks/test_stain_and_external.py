"""Stain handling end to end: normalisation fitted on train and kept in the checkpoint, the stain stress test, and
external validation on another lab's flat folder."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcc_lightning.data.demo import render_image
from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.tasks import evaluate
from bcc_lightning.tasks import train as training
from tests.conftest import compose_config, tiny_train_config


def best_ckpt(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["checkpoint"])


def flat_lab_folder(root: Path, per_class: int = 6) -> Path:
    """Another lab's folder as it comes: class folders at different depths, PNG/JPEG/TIFF mixed, no splits."""
    for i in range(per_class):
        for label, cls in ((0, "benign"), (1, "M")):
            folder = root / "slides" / ("batch2" if i % 2 else "") / cls
            folder.mkdir(parents=True, exist_ok=True)
            image = render_image(bool(label), 64, np.random.default_rng([77, label, i]))
            image.save(folder / f"img{i}.{('png', 'jpg', 'tif')[i % 3]}")
    return root


def test_external_validation_and_stain_stress(trained_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    external = flat_lab_folder(tmp_path / "other_lab")
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("eval", [f"ckpt={best_ckpt(trained_run)}", f"external={external}", "stain_stress=true",
                                  "data.num_workers=0", "trainer.accelerator=cpu", "report.cam_per_group=0"])
    result = evaluate.run(cfg)
    ext = result["external"]
    assert ext["metrics"]["n"] == 12 and ext["leakage"]["clean"] is True
    assert (tmp_path / "external" / "report.md").is_file() and (tmp_path / "external" / "predictions.csv").is_file()
    side = (tmp_path / "internal_vs_external.md").read_text()
    assert "| AUROC |" in side and str(external.resolve()) in side
    stress = result["stain_stress"]
    assert [r["strength"] for r in stress] == sorted(r["strength"] for r in stress) and stress[0]["strength"] == 0
    # strength 0 re-scores the unperturbed pixels: the split's own AUROC
    assert stress[0]["auroc"] == pytest.approx(result["metrics"]["auroc"], abs=1e-6)
    assert (tmp_path / "stain_stress.png").stat().st_size > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["external"]["metrics"]["n"] == 12


def test_external_copies_of_training_images_are_flagged(trained_run: Path, demo_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    external = flat_lab_folder(tmp_path / "other_lab", per_class=3)
    train_image = next((demo_root / "train" / "M").glob("*.png"))
    Image.open(train_image).transpose(Image.Transpose.ROTATE_90).save(external / "slides" / "M" / "copy.png")
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("eval", [f"ckpt={best_ckpt(trained_run)}", f"external={external}", "data.num_workers=0",
                                  "trainer.accelerator=cpu", "report.cam_per_group=0", "report.grid_size=0"])
    leakage = evaluate.run(cfg)["external"]["leakage"]
    assert leakage["test_with_copy_in_train"] == 1 and leakage["examples"][0].endswith("copy.png")


def test_stain_normalisation_is_fitted_on_train_and_travels_in_the_checkpoint(demo_root: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    training.run(tiny_train_config(demo_root, ["data.stain_norm=reinhard", "data.augment.stain=0.05",
                                               "trainer.fast_dev_run=false", "trainer.max_epochs=1", "logger=none",
                                               "report.cam_per_group=0", "report.grid_size=0"]))
    model = load_checkpoint(best_ckpt(tmp_path))
    state = model.preprocess.stain_norm
    assert state["method"] == "reinhard" and len(state["means"]) == 3
    assert json.loads((tmp_path / "model_card.json").read_text())["model"]["input"]["stain_norm"] == state
