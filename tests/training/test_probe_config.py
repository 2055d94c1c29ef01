"""The probe's settings have one home, conf/probe/logistic.yaml (#28): train.py's experiment=linear_probe and the
probe task's own config read the same values, and bad ones stop before any embedding is computed."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bcc_lightning.training.probe import run_probe
from bcc_lightning.utils.config import check_config, config_dir
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config, tiny_train_config


def test_one_home_for_the_probe_settings() -> None:
    home = OmegaConf.to_container(OmegaConf.load(config_dir() / "probe" / "logistic.yaml"))
    assert home["Cs"] == [0.001, 0.01, 0.1, 1.0, 10.0, 100.0] and home["few_shot"] == [1, 2, 5, 10, 20, 50]
    for cfg in (compose_config("train", ["experiment=linear_probe"]), compose_config("probe", ["experiment=demo"])):
        assert OmegaConf.to_container(cfg.probe) == home
        assert cfg.model.freeze_backbone and cfg.model.hidden == 0
    assert cfg.data.demo.generate  # the probe task's config combines with experiment=demo
    assert compose_config("train").probe is None  # fine-tuning


def test_probe_without_settings_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="experiment=linear_probe"):
        run_probe(tiny_train_config(tmp_path))


def test_bad_probe_settings_stop_before_embedding(tmp_path: Path) -> None:
    # data.root does not exist: the settings are refused before the data (or a backbone) is touched
    with pytest.raises(UserError, match=r"probe.Cs must be a list of positive numbers \(got \[\]\)"):
        run_probe(tiny_train_config(tmp_path / "absent", ["experiment=linear_probe", "probe.Cs=[]"]))
    cfg = compose_config("probe")
    for key, value, message in (("Cs", [0.1, -1], "probe.Cs must be a list of positive numbers"),
                                ("knn_k", None, "probe.knn_k must be a list of whole numbers >= 1"),
                                ("knn_k", [0], "probe.knn_k must be a list of whole numbers >= 1"),
                                ("select", "accuracy", "probe.select must be one of auroc, loss"),
                                ("max_iter", 0, "probe.max_iter must be a whole number >= 1")):
        bad = cfg.copy()
        bad.probe[key] = value
        with pytest.raises(UserError, match=message):
            check_config(bad)
