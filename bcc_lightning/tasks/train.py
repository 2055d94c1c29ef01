"""`python train.py [model=densenet121] [experiment=demo] [-m ...]` (also `bcc-train`): build data, model,
callbacks, loggers and trainer from the config; fit; evaluate the best checkpoint with the full report. The
building blocks live in bcc_lightning/training (assemble.py, probe.py); this module composes them."""

from __future__ import annotations

import math
import signal
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from bcc_lightning.callbacks.preemption import Preemption, StopSignals
from bcc_lightning.models.backbones import initialisation_text
from bcc_lightning.reports.metrics import METRICS, metric_keys
from bcc_lightning.training.assemble import (
    audit_data,
    build,
    build_callbacks,
    build_loggers,
    build_trainer,
    record_in_trackers,
    resume_path,
    test_best,
    validate_config,
)
from bcc_lightning.training.probe import run_probe
from bcc_lightning.utils.config import log, run_dir
from bcc_lightning.utils.errors import Stopped


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run(cfg: DictConfig) -> float | None:
    """Train, test the best checkpoint, write metrics.json; return the best monitored value for sweepers.

    SIGTERM or SIGUSR1 stops the run cleanly (callbacks/preemption.py): `Stopped`, exit status 128 + the signal."""
    with StopSignals() as signals:
        if cfg.probe:  # experiment=linear_probe: a frozen backbone's embeddings and a linear head
            return run_probe(cfg)
        return _train(cfg, signals)


def _train(cfg: DictConfig, signals: StopSignals) -> float | None:
    outdir = run_dir()
    validate_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    model, datamodule, data_info = build(cfg, outdir)
    leakage = audit_data(cfg, datamodule)  # data.audit=error stops here, before any weights are trained
    callbacks, checkpoint = build_callbacks(cfg, outdir)
    preemption = Preemption(signals)
    loggers = build_loggers(cfg, outdir)
    trainer = build_trainer(cfg, [*callbacks, preemption], loggers or False, outdir)
    log.info("Backbone %s at %d px, initialisation %s, precision %s, run directory %s", cfg.model.name,
             model.preprocess.img_size, initialisation_text(model.hparams.initialisation), trainer.precision, outdir)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and data_info["synthetic_data"]:
            logger.experiment.add_text("note", "SYNTHETIC DEMO DATA: not real microscopy images.")

    # torch.compile: worth it on GPUs for long runs; checkpoints keep the plain module's parameter names.
    fit_model = torch.compile(model) if cfg.compile else model
    try:
        trainer.fit(fit_model, datamodule=datamodule, ckpt_path=resume_path(cfg, outdir))
    except (SIGTERMException, Stopped) as exc:  # Lightning's own stop after a batch, or ours before the loops ran
        signum = exc.signum if isinstance(exc, Stopped) else (signals.signum or signal.SIGTERM)
        raise Stopped(signum, preemption.summary(trainer, signum, outdir)) from None
    except SystemExit as exc:  # Lightning turns Ctrl+C into exit status 1; the entry point's own message and 130
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise

    result = test_best(cfg, model, datamodule, checkpoint, trainer, loggers, outdir, leakage)
    record_in_trackers(cfg, loggers, outdir)
    m = result["metrics"]
    print(f"\nRun directory: {outdir}")
    print(f"Best checkpoint: {result['checkpoint'] or '(none written: fast_dev_run)'}")
    print(f"Test ({m['n']} images{', SYNTHETIC DEMO DATA' if data_info['synthetic_data'] else ''}): "
          + ", ".join(f"{METRICS[key].short} {_fmt(m.get(key))}" for key in metric_keys("summary")))
    if leakage is not None and not leakage["clean"]:
        print(f"WARNING (leakage): {leakage['verdict']}")
    best = result["best_monitor_value"]
    return best if best is not None and math.isfinite(best) else None


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import train as _main

    _main()
