"""The benchmark in a tiny configuration: it must produce a complete, sane table (never a timing assertion)."""

import json
from pathlib import Path

import pytest

from bcc_lightning.tasks import bench
from bcc_lightning.utils.errors import UserError
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


@pytest.mark.slow  # twelve short train.py runs: minutes on two cores
def test_bench_epochs_mode_with_a_worker_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """Seconds per epoch of train.py's own path (defaults, streaming, each worker count cached and streaming) beside
    the hand loops and the floor with validation: every row present, positive, and in bench_epochs.json."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_config("bench", ["mode=epochs", "model.img_size=32", "data.batch_size=4", "n_images=8",
                                   "epoch_val_images=4", "epochs=2", "steps=1", "warmup=1", "repeats=1",
                                   "epoch_workers=[0]", "epoch_rounds=2", "naive=false", "data.num_workers=0",
                                   "trainer.accelerator=cpu", "trainer.precision=32-true"])
    result = bench.run(cfg)
    rows = result["steady_state"]
    assert {"train.py, data.cache=auto, data.num_workers=0", "train.py, data.cache=null, data.num_workers=0",
            "train.py, data.cache=null (streaming)"} <= set(rows)
    hand = [name for name in rows if name.startswith(bench.HAND_LOOP)]
    assert len(hand) == 2 and any("bf16-mixed" in n for n in hand) and any("32-true" in n for n in hand)
    assert any(name.startswith(bench.DATAMODULE_LOOP) for name in rows)
    assert all(len(epochs) == 2 and min(epochs) > 0 for epochs in result["seconds_per_epoch"].values())
    # two rounds (the second in reverse order): every system ran twice, and the floor was measured twice
    assert all(len(r) == 2 and all(len(epochs) == 2 for epochs in r) for r in result["runs"].values())
    assert len(result["floors_per_round"]) == 2
    assert result["model_step_floor_s"] > 0 and result["validation_floor_s"] > 0
    assert json.loads((tmp_path / "bench_epochs.json").read_text())["epochs"] == 2
    out = capsys.readouterr().out
    assert "floor: the above + inference on the validation images" in out and "vs floor" in out


def _epoch_result(steady: dict[str, float]) -> dict:
    return {"model": "mobilenetv2", "batch_size": 32, "precision": "32-true", "workers": 2, "train_images": 384,
            "val_images": 64, "device": "cpu", "steady_state": steady,
            "seconds_per_epoch": {k: [v + 1, v] for k, v in steady.items()},
            "model_step_floor_s": 9.0, "validation_floor_s": 1.0}


def test_epoch_table_compares_with_the_fastest_peer() -> None:
    """vs hand loop and vs Keras divide by the fastest row of each kind; vs floor by training + validation floor."""
    table = bench.format_epoch_table(_epoch_result({
        "train.py, default settings": 10.0, f"{bench.HAND_LOOP} (bf16-mixed)": 12.5,
        f"{bench.HAND_LOOP} (32-true)": 12.0, "the original recipe in Keras (generator loader, fp32)": 16.0,
        "the original recipe in Keras (tfdata loader, fp32)": 20.0}))
    default = next(line for line in table.splitlines() if line.startswith("| train.py, default settings"))
    cells = [c.strip() for c in default.split("|")[1:-1]]
    assert cells[1:] == ["10.0", "11.0", "0.83x", "0.62x", "1.00x"]


def test_epoch_table_reads_results_without_hand_loop_or_keras() -> None:
    """Older bench_epochs.json files named the reference "tuned plain loop" and had no Keras row."""
    table = bench.format_epoch_table(_epoch_result({"train.py, default settings": 10.0,
                                                    "tuned plain loop (32-true, channels-last, 2 workers)": 8.0}))
    default = next(line for line in table.splitlines() if line.startswith("| train.py, default settings"))
    assert [c.strip() for c in default.split("|")[1:-1]][3:] == ["1.25x", "-", "1.00x"]


def test_keras_peer_runs_in_the_given_python(tmp_path: Path) -> None:
    """keras_python gets the folder and settings and its JSON becomes the row; a failing one is a UserError."""
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\n"
                    "while [ $# -gt 0 ]; do case $1 in --json) out=$2;; --model) m=$2;; esac; shift; done\n"
                    'echo "{\\"seconds_per_epoch\\": [3.0, 2.0], \\"model\\": \\"$m\\"}" > $out\n')
    fake.chmod(0o755)
    cfg = compose_config("bench", ["epochs=2", f"keras_python={fake}"])
    assert bench.keras_epochs(cfg, tmp_path, "generator", tmp_path / "k.json") == [3.0, 2.0]
    assert json.loads((tmp_path / "k.json").read_text())["model"] == "mobilenetv2"
    with pytest.raises(UserError, match="keras_python"):
        bench.keras_epochs(compose_config("bench", ["keras_python=/nonexistent/python"]), tmp_path, "generator",
                           tmp_path / "k2.json")
    slow = tmp_path / "slow_python"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(UserError, match="keras_timeout_s=1"):
        bench.keras_epochs(compose_config("bench", [f"keras_python={slow}", "keras_timeout_s=1"]), tmp_path,
                           "generator", tmp_path / "k4.json")
    failing = tmp_path / "failing_python"
    failing.write_text("#!/bin/sh\necho 'boom' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(UserError, match="has TensorFlow"):
        bench.keras_epochs(compose_config("bench", [f"keras_python={failing}"]), tmp_path, "generator",
                           tmp_path / "k5.json")
    with pytest.raises(UserError, match="original's backbones"):
        bench.keras_epochs(compose_config("bench", ["model.name=resnet50", f"keras_python={fake}"]), tmp_path,
                           "generator", tmp_path / "k3.json")


def test_epoch_rounds_alternate_order_and_pool_the_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every system runs once a round with its own settings, round 2 in reverse order; the steady state pools each
    run's epochs after the first, and the floor is the median over the rounds."""
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[str, tuple, dict]] = []
    times = iter(range(1, 1000))

    def recorder(kind: str):  # noqa: ANN202
        def record(*args: object, **kwargs: object) -> list[float]:
            calls.append((kind, args, kwargs))
            return [100.0, float(next(times))]
        return record

    monkeypatch.setattr(bench, "_prepare_epoch_data", lambda cfg, root: root)
    for name, kind in (("train_py_epochs", "train.py"), ("handwritten_loop_epochs", "hand"),
                       ("plain_loop_epochs", "plain"), ("keras_epochs", "keras")):
        monkeypatch.setattr(bench, name, recorder(kind))
    floor_rates = iter([10, 20])  # round 1: 10 img/s, round 2: 20 img/s
    monkeypatch.setattr(bench, "bench_model", lambda cfg, channels_last: None)
    monkeypatch.setattr(bench, "model_step_rate", lambda *a: (next(floor_rates), 1.0))
    monkeypatch.setattr(bench, "tensor_inference_rate", lambda *a: (40, 1.0))
    cfg = compose_config("bench", ["mode=epochs", "epochs=2", "epoch_rounds=2", "repeats=1", "n_images=40",
                                   "epoch_val_images=8", "epoch_workers=[0,1]", "naive=true",
                                   "keras_python=/bin/true", "trainer.accelerator=cpu", "trainer.precision=32-true",
                                   "data.num_workers=2"])
    result = bench.run(cfg)
    n = len(result["runs"])
    assert n == 2 + 4 + 2 + 1 + 1 + 1 and len(calls) == 2 * n
    first, second = calls[:n], calls[n:]

    def settings(call: tuple[str, tuple, dict]) -> tuple:  # what a call runs, without its output folder
        kind, args, kwargs = call
        return kind, *[a for a in args[2:] if not isinstance(a, Path)], kwargs.get("workers")

    assert [settings(c) for c in second] == [settings(c) for c in first][::-1]
    train = [(c[1][2], c[2].get("workers"), c[1][3].name) for c in calls if c[0] == "train.py"]
    assert sorted(t[2] for t in train) == sorted(f"run_{x}_{r}" for r in (0, 1) for x in (
        "cached", "stream", "auto_0", "null_0", "auto_1", "null_1"))
    assert {(cache is None, workers) for cache, workers, folder in train if folder.startswith(("run_auto",
                                                                                               "run_null"))} == {
        (False, 0), (True, 0), (False, 1), (True, 1)}
    assert sorted(c[1][2] for c in first if c[0] == "hand") == ["32-true", "bf16-mixed"]
    # pooled steady state: the second epoch of each of the two runs (the first epoch, 100 s, never counts)
    for name, runs in result["runs"].items():
        assert result["steady_state"][name] == pytest.approx((runs[0][1] + runs[1][1]) / 2)
    assert result["model_step_floor_s"] == pytest.approx((40 / 10 + 40 / 20) / 2)


def test_epoch_mode_refuses_a_keras_run_that_would_not_compare() -> None:
    """Checked before anything runs: a backbone the Keras script lacks, another input size, an unknown loader."""
    base = ["mode=epochs", "keras_python=/bin/true", "trainer.accelerator=cpu"]
    for extra, message in ((["model.name=resnet50"], "original's backbones"), (["model.img_size=128"], "224 px"),
                           (["keras_loaders=[tf.data]"], "keras_loaders"), (["epoch_rounds=0"], "epoch_rounds")):
        with pytest.raises(UserError, match=message):
            bench.run(compose_config("bench", [*base, *extra]))
