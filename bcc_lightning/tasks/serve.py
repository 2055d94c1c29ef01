"""`bcc-serve ckpt=PATH [host=127.0.0.1] [port=8000]` (also `python -m bcc_lightning.tasks.serve`): serve a checkpoint
over HTTP with LitServe.

POST /predict takes images as multipart fields named `file` (`cam=true` adds a Grad-CAM PNG) and answers one JSON
object per image; GET /model is the model card, GET /health LitServe's health check, GET / a page for browsers.
threshold=auto applies the operating point the checkpoint carries (threshold, temperature, TTA views), as bcc-predict
does; a checkpoint without one stops with a message saying how to get one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.models.checkpoint import point_label, read_checkpoint, resolve_tta
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.utils.config import check_config
from bcc_lightning.utils.errors import UserError

USAGE = ("Usage: bcc-serve ckpt=PATH [host=127.0.0.1] [port=8000] [threshold=auto|0.5|PATH/metrics.json] "
         "[tta=auto|true|false] [cam=true] [max_batch_size=8] [batch_timeout=0.01] [workers=1] [max_upload_mb=20]")


def _number(cfg: DictConfig, key: str, low: float, integer: bool = False) -> Any:
    """cfg[key] as a number >= low, or a UserError naming the key."""
    value = cfg[key]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < low or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise UserError(f"{key} must be {kind} >= {low:g} (got {value!r}). {USAGE}")
    return int(number) if integer else number


def run(cfg: DictConfig) -> None:
    if not cfg.ckpt:
        raise UserError(USAGE)
    check_config(cfg)
    ckpt = Path(cfg.ckpt).expanduser()
    if ckpt.suffix.lower() in (".onnx", ".pt") and not ckpt.name.endswith(".ckpt"):
        raise UserError(f"ckpt={ckpt} is an exported model; bcc-serve serves the .ckpt written by train.py (it needs "
                        f"the PyTorch model for TTA and Grad-CAM). Pass e.g. ckpt=outputs/train/<run>/checkpoints/"
                        f"last.ckpt.")
    # a missing or foreign file fails here with its own message, before any worker starts
    threshold, point = resolve_operating_point(cfg.threshold, ckpt, read_checkpoint(ckpt))
    tta = resolve_tta(cfg.tta, point)
    if not 0 < threshold < 1:
        raise UserError(f"threshold must lie strictly between 0 and 1; got {threshold}.")
    port = _number(cfg, "port", 0, integer=True)
    if port > 65535:
        raise UserError(f"port must be between 0 and 65535 (got {port}).")
    # litserve loads for this task only
    from bcc_lightning.serving.api import ServeSettings, build_server, run_server, server_fast

    settings = ServeSettings(
        ckpt=str(ckpt), point=dict(point), threshold_method=point_label(point), tta=tta,
        cam=bool(cfg.cam), cam_layer=cfg.cam_layer,
        max_batch_size=_number(cfg, "max_batch_size", 1, integer=True),
        batch_timeout=_number(cfg, "batch_timeout", 0), workers=_number(cfg, "workers", 1, integer=True),
        max_upload_mb=_number(cfg, "max_upload_mb", 0.001),
        max_image_megapixels=_number(cfg, "max_image_megapixels", 0.001),
        max_aspect_ratio=_number(cfg, "max_aspect_ratio", 1), max_request_megapixels=_number(
            cfg, "max_request_megapixels", 0.001), max_batch_megapixels=_number(cfg, "max_batch_megapixels", 0.001),
        worker_restarts=_number(cfg, "worker_restarts", 0, integer=True), accelerator=str(cfg.trainer.accelerator),
        precision=cfg.trainer.precision, timeout=_number(cfg, "timeout", 1),
        fast=server_fast(cfg.inference.fast, str(cfg.trainer.accelerator)))
    host = {"localhost": "127.0.0.1"}.get(str(cfg.host), str(cfg.host))
    if host not in ("127.0.0.1", "0.0.0.0", "::"):
        # LitServe binds only these; a specific interface address would need a reverse proxy in front.
        raise UserError(f"host={cfg.host} is not supported: use 127.0.0.1 (this machine only, the default), 0.0.0.0 "
                        f"(every IPv4 interface) or :: (every IPv6 interface).")
    server = build_server(settings)
    print(f"Serving {ckpt} at http://{host}:{port}/ (threshold {threshold:.4f}, {settings.threshold_method}; "
          f"{'TTA: 8 views' if tta else 'no TTA'}; "
          f"batches of up to {settings.max_batch_size} requests). Ctrl+C or SIGTERM stops.", flush=True)
    run_server(server, host, port, log_level=str(cfg.log_level))


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import serve as _main

    _main()
