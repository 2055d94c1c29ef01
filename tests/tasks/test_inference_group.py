"""conf/inference/ (#28): one place for the operating point (threshold, tta) and the fast path, shared by predict,
serve, export and eval; the README's short forms (`threshold=0.4`, `tta=true`) and the old `cam_layer=` still work."""

from __future__ import annotations

import re

import pytest

from bcc_lightning.utils.config import check_config, config_dir
from tests.conftest import compose_config

DEPLOY = ("predict", "serve", "export")


@pytest.mark.parametrize("task", DEPLOY)
def test_short_forms_and_group_keys_are_one_setting(task: str) -> None:
    cfg = compose_config(task)
    assert (cfg.threshold, cfg.tta) == ("auto", "auto") == (cfg.inference.threshold, cfg.inference.tta)
    for overrides in (["threshold=0.4", "tta=true"], ["inference.threshold=0.4", "inference.tta=true"]):
        cfg = compose_config(task, overrides)
        assert (cfg.threshold, cfg.tta) == (0.4, True), overrides
        check_config(cfg)


def test_each_task_has_the_fast_path_only_where_it_runs() -> None:
    for task in ("predict", "serve", "eval"):
        assert compose_config(task, ["inference.fast=false"]).inference.fast is False
    assert "fast" not in compose_config("export").inference  # the exporter never scores images: no inert key
    evaluation = compose_config("eval")
    assert evaluation.threshold == 0.5 and evaluation.tta is False and "threshold" not in evaluation.inference


@pytest.mark.parametrize("task", ["predict", "serve"])
def test_cam_layer_is_report_cam_layer_as_in_train_and_eval(task: str) -> None:
    assert compose_config(task).cam_layer is None
    for override in ("report.cam_layer=features.18", "cam_layer=features.18"):  # the new spelling, the old one
        assert compose_config(task, [override]).cam_layer == "features.18"
    assert "cam_layer" in compose_config("eval").report


def test_each_default_is_written_once() -> None:
    """The fast path's default is written in conf/inference/ only, and the deploying tasks' threshold and tta only
    point at the group's (their comments and defaults were copied three times before)."""
    conf = config_dir()
    fast = sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")
                  if re.search(r"^\s*fast: ", p.read_text(), re.MULTILINE))
    assert fast == ["inference/fast.yaml"]
    for task in DEPLOY:
        text = (conf / f"{task}.yaml").read_text()
        for key in ("threshold", "tta"):
            assert re.findall(rf"^{key}: (.*)$", text, re.MULTILINE) == [f"${{inference.{key}}}"], (task, key)
