"""`bcc-export ckpt=PATH [format=onnx|torchscript] [out=PATH] [threshold=auto|0.5|PATH/metrics.json]
[input=float01_nchw|uint8_nchw|uint8_nhwc] [tta=auto|true|false] [without_stain_norm=false]` (also
`python -m bcc_lightning.tasks.export`).

The operating point is resolved as predict resolves it (threshold=auto: the point the checkpoint carries), and the
graph applies it as predict does: its temperature and, for a point chosen with TTA, the 8 views inside the graph,
so that the exported prob_malignant equals predict's and the point's sensitivity holds for the shipped file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.models.checkpoint import point_label, read_checkpoint, resolve_tta
from bcc_lightning.models.export import FORMATS, INPUTS, export_model
from bcc_lightning.reports.operating_point import resolve_operating_point
from bcc_lightning.utils.config import check_config
from bcc_lightning.utils.errors import UserError


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.ckpt:
        raise UserError("Usage: bcc-export ckpt=PATH [format=onnx|torchscript] [out=PATH] [threshold=auto|NUMBER] "
                        "[input=float01_nchw|uint8_nchw|uint8_nhwc] [tta=auto|true|false]")
    check_config(cfg)
    ckpt = Path(cfg.ckpt).expanduser()
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {list(FORMATS)}; got {fmt!r}.")
    input_form = str(cfg.input)
    if input_form not in INPUTS:
        raise UserError(f"input must be one of {', '.join(INPUTS)} (got {input_form!r}): 0-1 floats (N, 3, S, S), "
                        f"or 8-bit pixels channels-first or channels-last.")
    out = Path(cfg.out).expanduser() if cfg.out else ckpt.with_suffix(FORMATS[fmt])
    threshold, point = resolve_operating_point(cfg.threshold, ckpt, read_checkpoint(ckpt))
    tta = resolve_tta(cfg.tta, point)
    sidecar = export_model(ckpt, fmt, out, threshold, int(cfg.opset), bool(cfg.check), point, tta=tta,
                           input_form=input_form, without_stain_norm=bool(cfg.without_stain_norm))
    parity = sidecar.get("parity")
    print(f"Exported {fmt} model to {out} with {out.name}.json beside it"
          + (f"; parity with PyTorch: max |diff| {parity['max_abs_diff']:.2e}" if parity else ""))
    print(f"Threshold {threshold:.4f} ({point_label(point)}); temperature {sidecar['temperature']:.4g}; "
          f"{'TTA: the 8 views are inside the graph' if tta else 'one view'}")
    print(json.dumps(sidecar["input"], indent=2))
    return sidecar


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import export as _main

    _main()
