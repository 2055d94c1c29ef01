"""`bcc-export ckpt=PATH [format=onnx|torchscript] [out=PATH]` (also `python -m bcc_lightning.tasks.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.models.export import FORMATS, export_model
from bcc_lightning.utils.config import check_config
from bcc_lightning.utils.errors import UserError


def resolve_threshold(value: Any) -> tuple[float, dict[str, Any]]:
    """(threshold, operating point) from a number, or from an evaluation's metrics.json (its operating_point, so
    the sidecar says how the threshold was chosen)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is not None:
        if not 0 <= number <= 1:
            raise UserError(f"threshold={value} must lie in [0, 1], or be the path of an evaluation's metrics.json.")
        return number, {"threshold": number, "method": "fixed", "chosen_on": None}
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise UserError(f"threshold={value!r} is neither a number in [0, 1] nor an existing file. Pass e.g. "
                        f"threshold=0.5, or threshold=outputs/eval/<run>/metrics.json from `bcc-eval "
                        f"threshold=youden` to copy the threshold chosen on the validation split.")
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"threshold={value}: could not read it as JSON ({exc}); pass an evaluation's "
                        f"metrics.json or a number.") from None
    point = body.get("operating_point") if isinstance(body, dict) else None
    if not isinstance(point, dict) or not isinstance(point.get("threshold"), (int, float)):
        raise UserError(f"{path} has no operating_point with a threshold: it is not an evaluation's metrics.json "
                        f"from this version. Re-run `bcc-eval ckpt=... threshold=youden` and pass its metrics.json, "
                        f"or give the number.")
    return float(point["threshold"]), {**point, "source": str(path.resolve())}


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("ckpt"):
        raise UserError("Usage: bcc-export ckpt=PATH [format=onnx|torchscript] [out=PATH]")
    check_config(cfg)
    ckpt = Path(cfg.ckpt).expanduser()
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {list(FORMATS)}; got {fmt!r}.")
    out = Path(cfg.out).expanduser() if cfg.get("out") else ckpt.with_suffix(FORMATS[fmt])
    threshold, point = resolve_threshold(cfg.threshold)
    sidecar = export_model(ckpt, fmt, out, threshold, int(cfg.opset), bool(cfg.check), point)
    parity = sidecar.get("parity")
    print(f"Exported {fmt} model to {out} with {out.name}.json beside it"
          + (f"; parity with PyTorch: max |diff| {parity['max_abs_diff']:.2e}" if parity else ""))
    print(json.dumps(sidecar["input"], indent=2))
    return sidecar


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import export as _main

    _main()
