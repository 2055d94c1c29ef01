"""The root conftest.py's default of two xdist workers: only when xdist is loaded, -n was not given, and this process
is not itself a worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import conftest as root_conftest


class FakeConfig:
    def __init__(self, xdist: bool = True, worker: bool = False, pdb: bool = False, **option: Any) -> None:
        self.option = SimpleNamespace(**{"numprocesses": None, "dist": "no", **option})
        self.pluginmanager = SimpleNamespace(hasplugin=lambda name: xdist and name == "xdist")
        self.pdb = pdb
        if worker:
            self.workerinput = {"workerid": "gw0"}

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.pdb if name == "usepdb" else default


def after(config: FakeConfig) -> tuple[Any, str]:
    root_conftest.pytest_cmdline_main(config)
    return config.option.numprocesses, config.option.dist


def test_two_workers_by_file_only_when_nothing_else_was_asked_for() -> None:
    assert after(FakeConfig()) == (2, "loadfile")
    assert after(FakeConfig(dist="load")) == (2, "load")  # an explicit --dist is kept
    assert after(FakeConfig(numprocesses=0)) == (0, "no")  # -n 0: serial
    assert after(FakeConfig(numprocesses=4)) == (4, "no")  # xdist itself then picks its distribution
    assert after(FakeConfig(xdist=False)) == (None, "no")  # -p no:xdist, or xdist not installed
    assert after(FakeConfig(worker=True)) == (None, "no")  # a worker must not start workers of its own
    assert after(FakeConfig(pdb=True)) == (None, "no")  # --pdb needs one process
