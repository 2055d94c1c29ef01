"""bcc-audit's config (#28): train's data.* keys and audit.min_overlap, the old top-level spellings still accepted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bcc_lightning.data.demo import generate
from bcc_lightning.tasks import audit as audit_task
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config


def test_audit_speaks_trains_data_keys() -> None:
    """The keys the audit reads are train.py's (whose data.audit runs the same audit), with the same defaults where
    both mean the same thing; nothing is left at the top but the old spellings, which point at them."""
    audit, train = compose_config("audit"), compose_config("train")
    assert set(audit.data) <= set(train.data)
    assert audit.data.num_workers == train.data.num_workers and audit.data.fold == train.data.fold
    written = OmegaConf.to_container(audit, resolve=False)
    assert {old: written[old] for old in audit_task.OLD_SPELLINGS} == {
        old: f"${{{new}}}" for old, new in audit_task.OLD_SPELLINGS.items()}


def test_old_spellings_move_to_their_keys(caplog: pytest.LogCaptureFixture) -> None:
    cfg = compose_config("audit", ["root=/r", "fold=2", "num_workers=1", "cache=/c", "min_overlap=0.7",
                                   "progress=false"])
    with caplog.at_level(logging.WARNING, logger="bcc_lightning"):
        given = audit_task.adopt_old_spellings(cfg)
    assert given == ["root", "fold", "num_workers", "cache", "min_overlap"]
    assert OmegaConf.to_container(cfg.data) == {"root": "/r", "fold": 2, "num_workers": 1, "cache": "/c"}
    assert cfg.audit.min_overlap == 0.7 and not set(audit_task.OLD_SPELLINGS) & set(cfg)
    assert "root=, fold=, num_workers=, cache=, min_overlap= are the old spellings of data.root=" in caplog.text
    caplog.clear()
    quiet = compose_config("audit", ["data.root=/r"])
    assert audit_task.adopt_old_spellings(quiet) == [] and quiet.data.root == "/r" and not caplog.text


def test_missing_root_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs the split folder to audit: data.root=ROOT"):
        audit_task.run(compose_config("audit"))


def test_new_and_old_spellings_audit_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same clean demo folder through both spellings; audit.min_overlap reaches the detector."""
    demo_root = generate(tmp_path / "demo", n_per_class=7, size=64, seed=3)  # 4 + 1 + 2 per class
    cache = tmp_path / "descriptors"
    results = {}
    for name, overrides in {
        "new": [f"data.root={demo_root}", "data.num_workers=0", f"data.cache={cache}", "audit.min_overlap=0.7"],
        "old": [f"root={demo_root}", "num_workers=1", f"cache={cache}", "min_overlap=0.7"],
    }.items():
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        results[name] = audit_task.run(compose_config("audit", [*overrides, "progress=false"]))
        assert json.loads((tmp_path / name / "leakage.json").read_text())["clean"]
    assert results["new"] == results["old"] and results["new"]["min_overlap"] == 0.7
    assert any(cache.iterdir())  # data.cache is where the descriptors went
