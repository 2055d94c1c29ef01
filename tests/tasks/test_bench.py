"""The benchmark in a tiny configuration: it must produce a complete, sane table (never a timing assertion)."""

import json
from pathlib import Path

import pytest

from bcc_lightning.tasks import bench
from tests.conftest import compose_config


def test_bench_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("bench", ["model.img_size=32", "data.batch_size=4", "n_images=12", "steps=2", "warmup=1",
                                   "repeats=2", "loader_workers=[0]", "data.num_workers=0",
                                   "trainer.accelerator=cpu", "trainer.precision=32-true"])
    result = bench.run(cfg)
    rates = result["images_per_s"]
    for name in ("loader only, 0 workers (default)", "model step only (tensors in memory)",
                 "full train.py path (Lightning)", "plain PyTorch loop, same settings",
                 "naive loop (fp32, channels-first)", "inference (eval.py / predict)"):
        assert rates[name] > 0, name
    assert set(result["ratios"]) >= {"full / model step", "full / plain loop", "loader (default workers) / model step"}
    assert all(len(values) == 2 for values in result["repeats"].values())  # every row timed twice, in turns
    assert result["memory"]["peak_rss_main_mb"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["model"] == "mobilenetv2"
    assert "| full / plain loop" in capsys.readouterr().out


def test_bench_uses_train_model_groups() -> None:
    cfg = compose_config("bench", ["model=inceptionv3"])
    assert cfg.model.name == "inceptionv3" and cfg.optimizer.name == "rmsprop"  # its own recipe, as in train.py
    assert compose_config("bench", ["model=densenet121"]).model.name == "densenet121"


def test_bench_times_the_cache_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = ["model.img_size=32", "data.batch_size=4", "n_images=12", "steps=1", "warmup=1", "repeats=1",
                 "loader_workers=[0]", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.precision=32-true",
                 "naive=false", f"data.cache={tmp_path / 'cache'}"]
    result = bench.run(compose_config("bench", [*overrides, "loader_workers=[1]"]))
    rates = result["images_per_s"]
    assert rates["cache build (decode + resize, 0 workers)"] > 0
    assert rates["loader only, 0 workers (default)"] > 0 and rates["loader only, 1 workers"] > 0
    worker = result["memory"]["largest_loader_worker_mb"]  # read from /proc: Linux, as CI
    assert worker["peak_rss"] > 0 and worker["private"] > 0 and worker["shared"] > 0


def test_bench_refuses_untimed_settings() -> None:
    from bcc_lightning.utils.errors import UserError

    with pytest.raises(UserError, match="warmup must be a whole number >= 1"):
        bench.run(compose_config("bench", ["warmup=0"]))


@pytest.mark.slow  # six short train.py runs: minutes on two cores
def test_bench_epochs_mode_with_a_worker_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """Seconds per epoch of train.py's own path (defaults, streaming, each worker count cached and streaming) beside
    the hand loops and the floor with validation: every row present, positive, and in bench_epochs.json."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("bench", ["mode=epochs", "model.img_size=32", "data.batch_size=4", "n_images=8",
                                   "epoch_val_images=4", "epochs=2", "steps=1", "warmup=1", "repeats=1",
                                   "epoch_workers=[0]", "naive=false", "data.num_workers=0",
                                   "trainer.accelerator=cpu", "trainer.precision=32-true"])
    result = bench.run(cfg)
    rows = result["steady_state"]
    assert {"train.py, data.cache=auto, data.num_workers=0", "train.py, data.cache=null, data.num_workers=0",
            "train.py, data.cache=null (streaming)"} <= set(rows)
    assert all(len(epochs) == 2 and min(epochs) > 0 for epochs in result["seconds_per_epoch"].values())
    assert result["model_step_floor_s"] > 0 and result["validation_floor_s"] > 0
    assert json.loads((tmp_path / "bench_epochs.json").read_text())["epochs"] == 2
    out = capsys.readouterr().out
    assert "floor: the above + inference on the validation images" in out and "vs floor" in out
