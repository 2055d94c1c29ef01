"""The test suite's default of two pytest-xdist workers, here and not in pyproject's addopts: an `-n` in addopts is an
unknown option once xdist is not loaded, so `python -m pytest -p no:xdist` (or a checkout without pytest-xdist)
could not run at all."""

from __future__ import annotations

import pytest

WORKERS = 2  # CI has 2 cores; tests/conftest.py gives each worker one torch thread


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Two workers, whole files to a worker (module fixtures are built once), unless `-n` was given, xdist is not
    loaded, this process is itself a worker (its numprocesses is cleared: it must not start workers of its own), or
    --pdb asks for one process. Runs before xdist's own tryfirst hook, as the later registered of the two."""
    if (not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput")
            or config.option.numprocesses is not None or config.getoption("usepdb", False)):
        return
    config.option.numprocesses = WORKERS
    if config.option.dist == "no":
        config.option.dist = "loadfile"
