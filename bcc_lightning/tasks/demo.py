"""`bcc-demo out=demo_data` (also `python -m bcc_lightning.tasks.demo`): write the synthetic demo dataset.

`layout=raw width=700 height=460` writes an unsplit `out/{B,M}` folder of microscope-sized images instead.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bcc_lightning.data.demo import generate, generate_raw
from bcc_lightning.utils.config import check_config
from bcc_lightning.utils.errors import UserError


def run(cfg: DictConfig) -> Path:
    check_config(cfg)
    if cfg.layout not in ("split", "raw"):
        raise UserError(f"layout must be split or raw (got {cfg.layout!r}).")
    if cfg.layout == "raw":
        out = generate_raw(cfg.out, int(cfg.n_per_class), int(cfg.width), int(cfg.height), int(cfg.seed))
    else:
        out = generate(cfg.out, int(cfg.n_per_class), int(cfg.size), int(cfg.seed), overwrite=bool(cfg.overwrite))
    print(f"Synthetic demo dataset (not real data) in {out}")
    return out


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import demo as _main

    _main()
