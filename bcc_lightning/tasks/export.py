"""`bcc-export ckpt=PATH [format=onnx|torchscript] [out=PATH] [threshold=auto|0.5|PATH/metrics.json]` (also
`python -m bcc_lightning.tasks.export`). The operating point (threshold and temperature) is resolved as predict does
it (reports.operating_point.resolve_operating_point), so the exported prob_malignant equals predict's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.models.export import FORMATS, export_model
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.utils.config import check_config
from bcc_lightning.utils.errors import UserError


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise UserError("Usage: bcc-export ckpt=PATH [format=onnx|torchscript] [out=PATH]")
    check_config(cfg)
    ckpt = Path(cfg.ckpt).expanduser()
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {list(FORMATS)}; got {fmt!r}.")
    out = Path(cfg.out).expanduser() if cfg.get("out") else ckpt.with_suffix(FORMATS[fmt])
    threshold, point = resolve_operating_point(cfg.threshold, ckpt)
    sidecar = export_model(ckpt, fmt, out, threshold, int(cfg.opset), bool(cfg.check), point)
    parity = sidecar.get("parity")
    print(f"Exported {fmt} model to {out} with {out.name}.json beside it"
          + (f"; parity with PyTorch: max |diff| {parity['max_abs_diff']:.2e}" if parity else ""))
    print(f"Threshold {threshold:.4f} ({point.get('method')}); temperature {sidecar['temperature']:.4g}")
    print(json.dumps(sidecar["input"], indent=2))
    return sidecar


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import export as _main

    _main()
