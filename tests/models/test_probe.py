"""Linear probes on a tiny timm ViT with local weights: train and eval (Grad-CAM) beside it, the embedding cache
(reused, invalidated by a changed weight file), the probe checkpoint read like any other, and one sweep table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.models.probe import fit_logistic
from bcc_lightning.reports.aggregate import write_summary
from tests.conftest import run_in, tiny_train_config

SIZE = 32


def _weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), path)
    return path


def _vit_overrides(weights: Path) -> list[str]:
    return ["model.name=test_vit", "model.pretrained=true", f"model.weights={weights}", f"model.img_size={SIZE}",
            "logger=none", "report.grid_size=0", "report.cam_per_group=1", "data.audit=off"]


@pytest.fixture(scope="module")
def runs(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bcc_lightning.tasks import probe, train

    base = tmp_path_factory.mktemp("probe")
    weights = _weights(base / "vit.pth", 0)
    emb = base / "emb"
    probe_cfg = tiny_train_config(demo_root, ["experiment=linear_probe", *_vit_overrides(weights),
                                              f"probe.cache={emb}", "probe.Cs=[0.1,1.0]", "probe.knn_k=[1,3]",
                                              "probe.few_shot=[1,5,100]", "probe.few_shot_repeats=2"], lean=False)
    run_in(base / "probe1", probe.run, probe_cfg)
    run_in(base / "probe2", probe.run, probe_cfg)
    run_in(base / "train", train.run, tiny_train_config(demo_root, [*_vit_overrides(weights),
                                                                 "trainer.fast_dev_run=true"], lean=False))
    return {"base": base, "weights": weights, "emb": emb, "probe_cfg": probe_cfg}


def test_finetune_and_eval_with_gradcam_on_a_vit(runs: dict[str, Path]) -> None:
    run = runs["base"] / "train"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["img_size"] == SIZE and metrics["model"] == "test_vit"
    assert len(list((run / "test" / "gradcam").glob("*.png"))) >= 2


def test_probe_outputs_and_checkpoint(runs: dict[str, Path], demo_root: Path) -> None:
    run = runs["base"] / "probe1"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["probe"]["C"] in (0.1, 1.0) and metrics["knn"]["k"] in (1, 3)
    assert {s["cache"] for s in metrics["probe"]["embeddings"].values()} == {"built"}
    assert 0 <= metrics["knn"]["test"]["accuracy"] <= 1
    assert metrics["metrics"]["n"] == metrics["probe"]["embeddings"]["test"]["n"]
    assert (run / "test" / "report.md").is_file() and list((run / "test" / "gradcam").glob("*.png"))
    card = json.loads((run / "model_card.json").read_text())  # like a fine-tuned run, a probe hands on its card
    assert (run / "model_card.md").is_file() and card["checkpoint"]["path"].endswith("probe.ckpt")
    model = load_checkpoint(run / "checkpoints" / "probe.ckpt")
    assert model.hparams.model["probe"] is True and model.hparams.model["freeze_backbone"] is True
    # The head holds the probe: its logits on the cached embeddings equal the probe's own.
    from bcc_lightning.data.datamodule import BCCDataModule

    dm = BCCDataModule(demo_root, model.preprocess, batch_size=8, num_workers=0, cache=None)
    x = torch.stack([dm.dataset("val")[i][0] for i in range(4)])
    with torch.no_grad():
        features = model.backbone(model.normalise(x)).numpy()
        logits = model(x).numpy()
    weight, bias = model.head[-1].weight.detach()[0].numpy(), model.head[-1].bias.item()
    np.testing.assert_allclose(logits, features @ weight + bias, rtol=1e-4, atol=1e-4)
    assert (run / "metrics.json").is_file() and metrics["best_monitor_value"] == metrics["probe"]["val_loss"]


def test_probe_writes_the_few_shot_curve(runs: dict[str, Path]) -> None:
    import csv

    run = runs["base"] / "probe1"
    block = json.loads((run / "metrics.json").read_text())["few_shot"]
    assert block["sizes"] == [1, 5, 100] and block["repeats"] == 2 and "each image is its own group" in block["groups"]
    with (run / "test" / "few_shot.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["n_per_class"] for r in rows} == {"1", "5", "100"}
    ones = [r for r in rows if r["n_per_class"] == "1"]
    assert all(r["images_used"] == "2" and r["groups_used"] == "2" for r in ones)  # no manifest: images are groups
    train_n = json.loads((run / "metrics.json").read_text())["probe"]["embeddings"]["train"]["n"]
    assert all(r["capped"] == "True" and int(r["images_used"]) == train_n for r in rows if r["n_per_class"] == "100")
    curve = {c["n_per_class"]: c for c in block["curve"]}
    assert curve[100]["capped"] and 0 <= curve[5]["auroc"]["mean"] <= 1
    assert (run / "test" / "few_shot.png").stat().st_size > 1000
    assert "## Few-shot curve" in (run / "test" / "report.md").read_text()
    # Seeded: the second run (same seed, cached embeddings) draws and scores the same.
    again = (runs["base"] / "probe2" / "test" / "few_shot.csv").read_text()
    assert again == (run / "test" / "few_shot.csv").read_text()


def test_second_probe_reuses_the_cache_and_new_weights_invalidate_it(runs: dict[str, Path]) -> None:
    from bcc_lightning.tasks import probe

    second = json.loads((runs["base"] / "probe2" / "metrics.json").read_text())
    assert {s["cache"] for s in second["probe"]["embeddings"].values()} == {"reused"}
    first = json.loads((runs["base"] / "probe1" / "metrics.json").read_text())
    assert second["metrics"]["auroc"] == first["metrics"]["auroc"]
    _weights(runs["weights"], 1)  # the same file, new contents
    run_in(runs["base"] / "probe3", probe.run, runs["probe_cfg"])
    third = json.loads((runs["base"] / "probe3" / "metrics.json").read_text())
    assert {s["cache"] for s in third["probe"]["embeddings"].values()} == {"built"}
    assert len(list(runs["emb"].glob("train-*.f16"))) == 2


def test_probe_and_finetune_aggregate_into_one_table(runs: dict[str, Path], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for job, (source, overrides) in enumerate([("train", ["model.name=test_vit"]),
                                               ("probe1", ["model.name=test_vit", "experiment=linear_probe"])]):
        folder = sweep / str(job)
        (folder / ".hydra").mkdir(parents=True)
        shutil.copy(runs["base"] / source / "metrics.json", folder / "metrics.json")
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    result = write_summary(sweep)
    assert [j["status"] for j in result["jobs"]] == ["done", "done"]
    table = (sweep / "sweep_summary.md").read_text()
    assert "experiment=linear_probe" in table or "linear_probe" in table
    assert table.count("| 0 |") + table.count("| 1 |") >= 2


def test_logistic_probe_recovers_a_separable_direction() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * [1, 10, 1, 1, 100] + [0, 5, 0, 0, 50]
    y = (x[:, 1] - 5 > 0).astype(int)
    fitted = fit_logistic(x[:150], y[:150], x[150:], y[150:], [0.01, 1.0, 100.0])
    assert fitted.val["auroc"] > 0.99 and fitted.val["acc"] > 0.9
    # Folded back into raw units: in standard units (x std) feature 1 dominates the noise features.
    assert abs(fitted.weight[1] * 10) > 5 * max(abs(fitted.weight[[0, 2, 3]]))
    np.testing.assert_allclose(fitted.logits(x[150:]) >= 0, x[150:, 1] - 5 > 0)
