import pytest

from tests.conftest import compose_config

MODELS = ["mobilenetv2", "inceptionv3", "densenet121"]
OPTIMIZERS = ["adam", "adamw", "rmsprop", "sgd"]
EXPERIMENTS = ["demo", "seed_mobilenetv2", "seed_inceptionv3", "seed_densenet121"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("optimizer", [None, *OPTIMIZERS])
def test_every_model_and_optimizer_composes(model: str, optimizer: str | None) -> None:
    overrides = [f"model={model}"] + ([f"optimizer={optimizer}"] if optimizer else [])
    cfg = compose_config("train", overrides)
    assert cfg.model.name == model
    assert cfg.optimizer.name == (optimizer or ("rmsprop" if model == "inceptionv3" else "adam"))


@pytest.mark.parametrize(
    ("model", "optimizer", "lr"),
    [("mobilenetv2", "adam", 1e-4), ("densenet121", "adam", 1e-4), ("inceptionv3", "rmsprop", 1e-5)],
)
def test_model_brings_the_original_optimizer(model: str, optimizer: str, lr: float) -> None:
    cfg = compose_config("train", [f"model={model}"])
    assert (cfg.optimizer.name, cfg.optimizer.lr) == (optimizer, lr)


def test_command_line_wins_over_model_choice() -> None:
    cfg = compose_config("train", ["model=inceptionv3", "optimizer=adam", "optimizer.lr=3e-4"])
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", 3e-4)
    assert "alpha" not in cfg.optimizer  # no RMSprop keys leak into Adam


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("model", [None, *MODELS])
def test_experiments_compose(experiment: str, model: str | None) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"] + ([f"model={model}"] if model else []))
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 10
    if experiment.startswith("seed_"):
        assert cfg.model.pretrained is True
        expected = experiment.removeprefix("seed_")
        assert cfg.model.name == (model or expected)


def test_defaults_match_the_issue() -> None:
    cfg = compose_config("train")
    assert cfg.data.root == "split_data" and cfg.data.batch_size == 32
    assert cfg.callbacks.early_stopping.monitor == "val/loss" and cfg.callbacks.early_stopping.patience == 3
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.accelerator == "auto"
    assert "tensorboard" in cfg.logger
    assert compose_config("train", ["callbacks=none"]).callbacks.early_stopping is None
    assert set(compose_config("train", ["logger=csv"]).logger) == {"csv"}


@pytest.mark.parametrize("scheduler", ["none", "cosine", "plateau", "step"])
def test_scheduler_group(scheduler: str) -> None:
    assert compose_config("train", [f"scheduler={scheduler}"]).scheduler.name == scheduler


def test_eval_config() -> None:
    cfg = compose_config("eval", ["ckpt=x.ckpt"])
    assert cfg.split == "test" and cfg.data.root is None and cfg.threshold == 0.5


@pytest.mark.parametrize("task", ["train", "eval", "predict", "bench"])
def test_every_task_speaks_one_vocabulary(task: str) -> None:
    """Data root, batch size and workers under data.*, device and precision under trainer.* in every task."""
    cfg = compose_config(task, ["data.batch_size=7", "data.num_workers=1", "trainer.accelerator=cpu",
                                "trainer.precision=32-true"])
    assert cfg.data.batch_size == 7 and cfg.data.num_workers == 1 and "root" in cfg.data or task == "predict"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    for stale in ("batch_size", "num_workers", "accelerator", "device", "precision", "data_root", "workers"):
        assert stale not in cfg, f"{task}.yaml still has a top-level {stale}"


@pytest.mark.parametrize(("task", "overrides"), [
    ("prepare", ["raw=r", "out=o", "num_workers=2"]), ("export", ["ckpt=x"]), ("aggregate", ["sweep_dir=s"]),
    ("demo", ["out=d"]),
])
def test_other_tasks_compose(task: str, overrides: list[str]) -> None:
    cfg = compose_config(task, overrides)
    assert cfg.task_name == task


def test_bench_uses_the_model_group() -> None:
    """Model keys live in conf/model/ only: bench gets the same ones as train."""
    bench, train = compose_config("bench", ["model=densenet121"]), compose_config("train", ["model=densenet121"])
    assert dict(bench.model) == dict(train.model) and bench.optimizer == train.optimizer
