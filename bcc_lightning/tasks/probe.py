"""Linear probe (`experiment=linear_probe`): a frozen backbone's embeddings (cached), a logistic regression head and a
cosine kNN chosen on val, evaluated like a fine-tuned run (bcc_lightning/training/probe.py does the work).

Run through train.py (its run() dispatches on `cfg.probe`: `experiment=linear_probe`), or `python -m
bcc_lightning.tasks.probe [experiment=demo]`, whose config (conf/probe.yaml) is train.py's with the probe selected.
The probe's settings live in conf/probe/logistic.yaml.
"""

from __future__ import annotations

from omegaconf import DictConfig

from bcc_lightning.training.probe import run_probe


def run(cfg: DictConfig) -> float | None:
    """Embed, fit the probe and kNN on train (chosen on val), evaluate on test, write metrics.json; return the val
    value of the training monitor (callbacks.model_checkpoint.monitor, e.g. val/loss) for sweepers."""
    return run_probe(cfg)


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import probe as _main

    _main()
