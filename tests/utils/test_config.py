"""Config values are checked before any work, with one-paragraph errors."""

from pathlib import Path

import pytest

from bcc_lightning.tasks import train as training
from bcc_lightning.utils.errors import UserError
from tests.conftest import tiny_train_config


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=0", "max_epochs must be a whole number >= 1"),
    ("data.augment.hflip=2", r"hflip must be a number in \[0, 1\]"),
    ("model.unfreeze_at_epoch=2", "needs model.freeze_backbone=true"),
    ("model.img_size=40 model=inceptionv3", "too small"),
    ("trainer.max_epochs=abc", "max_epochs must be a whole number"),
    ("data.num_workers=-3", "num_workers must be a whole number >= 0"),
    ("optimizer.lr=-1", "optimizer.lr must be a number"),
])
def test_config_mistakes_caught_before_work(demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            override: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        training.run(tiny_train_config(demo_root, override.split()))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("task", "override", "suggestion"), [
    ("train", "trainer.max_epoch=3", "Did you mean trainer.max_epochs?"),
    ("train", "trainr.max_epochs=3", "Did you mean trainer.max_epochs?"),
    ("train", "data.augment.hflp=0.5", "data.augment.hflip"),
    ("eval", "thresold=youden", "Did you mean threshold?"),
    ("predict", "trainer.acelerator=cpu", "Did you mean trainer.accelerator?"),
    ("serve", "prot=8001", "port"),
])
def test_unknown_key_gets_the_close_match(task: str, override: str, suggestion: str) -> None:
    from bcc_lightning.utils.config import unknown_key_message

    message = unknown_key_message(task, [override])
    assert message is not None and suggestion in message
    assert f"+{override}" in message  # how to add a new key on purpose


def test_known_keys_and_sweeps_get_no_message() -> None:
    from bcc_lightning.utils.config import unknown_key_message

    assert unknown_key_message("train", ["trainer.max_epochs=3", "model=mobilenetv2,densenet121"]) is None
    message = unknown_key_message("train", ["model=mobilenetv2,densenet121", "optimizer.lrr=1e-3,1e-4"])
    assert message is not None and "optimizer.lr?" in message


def test_entry_point_prints_one_paragraph_for_a_typo(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from bcc_lightning.tasks import entry

    monkeypatch.setattr("sys.argv", ["train.py", "trainer.max_epoch=3"])
    try:
        with pytest.raises(SystemExit) as exited:
            entry.main("train")
    finally:
        GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "Did you mean trainer.max_epochs?" in err.replace("\n", " ")
    assert "Traceback" not in err and "not in struct" not in err  # Hydra's own lines are replaced


@pytest.mark.parametrize("override", ["group_pattern=^(P\\d+)_", "ratios=[0.7,0.15"])
def test_entry_point_explains_an_override_hydra_cannot_read(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], override: str) -> None:
    """An unquoted regex or an unclosed list: exit 2 and one paragraph saying how to quote, not Hydra's lexer lines."""
    from hydra.core.global_hydra import GlobalHydra

    from bcc_lightning.tasks import entry

    monkeypatch.setattr("sys.argv", ["bcc-prepare", "raw=r", "out=o", override])
    try:
        with pytest.raises(SystemExit) as exited:
            entry.main("prepare")
    finally:
        GlobalHydra.instance().clear()
    err = capsys.readouterr().err.replace("\n", " ")
    assert exited.value.code == 2
    assert f"The override '{override}' cannot be read" in err and "single quotes" in err
    assert "LexerNoViableAltException" not in err and "HYDRA_FULL_ERROR" not in err


def test_every_task_config_has_a_guarded_entry() -> None:
    """Each conf/<task>.yaml is run through entry.main, so its errors are paragraphs (the probe's was not)."""
    from bcc_lightning.tasks.entry import TASKS
    from bcc_lightning.utils.config import config_dir

    assert {p.stem for p in config_dir().glob("*.yaml")} == set(TASKS)
