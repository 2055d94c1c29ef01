"""A deployable model (ONNX or TorchScript) with a sidecar JSON, and the check that it matches PyTorch.

The exported graph takes float32 RGB images in [0, 1], shape (N, 3, S, S), already resized to S x S (whole image, no
crop); it normalises internally and returns the malignant probability (N,) and the raw logit (N,). Batch size is
dynamic. The probability is sigmoid(logit / T), T being the operating point's temperature (1 without calibration),
baked into the graph so that it equals predict's prob_malignant.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.models.backbones import initialisation_text
from bcc_lightning.models.checkpoint import load_checkpoint, read_checkpoint
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.utils.atomic_io import atomic_write, sha256_file, write_json
from bcc_lightning.utils.errors import UserError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class Deployable(nn.Module):
    """Normalisation + network + sigmoid(logit / T) in one graph, fp32, channels-first."""

    def __init__(self, model: BCCClassifier, temperature: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise UserError(f"The operating point's temperature must be a positive number (got {temperature}); "
                            f"re-run `bcc-eval ... calibrate=temperature` or pass a plain threshold.")
        self.normalise, self.backbone, self.head = model.normalise, model.backbone, model.head
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # [0, 1] in, as the sidecar documents; the model's own normalisation on the 0-255 scale.
        logits = self.head(self.backbone(self.normalise(images * 255))).squeeze(-1)
        return torch.sigmoid(logits / self.temperature), logits


def export_model(ckpt: Path, fmt: str, out: Path, threshold: float = 0.5, opset: int = 17,
                 check: bool = True, operating_point: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export the checkpoint's model and write the sidecar JSON; `operating_point` (threshold, method, chosen_on,
    temperature) records how the threshold was chosen (default: a fixed number). Its temperature is baked in."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {list(FORMATS)}; got {fmt!r}.")
    checkpoint = read_checkpoint(ckpt)
    model = load_checkpoint(ckpt, checkpoint).float().to(memory_format=torch.contiguous_format)
    model.channels_last = False
    point = operating_point or {"threshold": threshold, "method": "fixed", "chosen_on": None}
    temperature = float(point.get("temperature", 1.0))
    wrapper = Deployable(model, temperature).eval()
    size = model.preprocess.img_size
    example = torch.rand(2, 3, size, size)
    if fmt == "onnx":
        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
                torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["images"], output_names=["prob_malignant", "logit"],
                                  dynamic_axes={"images": {0: "batch"}, "prob_malignant": {0: "batch"},
                                                "logit": {0: "batch"}})
    else:
        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(wrapper, example)
            traced.save(str(tmp))
    atomic_write(out, write)

    data_info = checkpoint["hyper_parameters"].get("data_info") or {}
    # Which resize implementation training used (the two differ by at most one grey level).
    resizer = "torchvision's uint8 tensor resize" if model.preprocess.resize == "tensor" else "Pillow's resize"
    sidecar = {
        "format": fmt,
        "model_file": out.name,
        "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32", "range": [0.0, 1.0],
                  "channels": "RGB", "layout": "NCHW",
                  "preprocessing": f"decode to 8-bit RGB, resize the whole image to {size}x{size} "
                                   f"({model.preprocess.interpolation}, antialiased, no crop; {resizer}), "
                                   + (f"{model.preprocess.stain_norm['method']} stain normalisation with "
                                      f"input.stain_norm's fitted numbers (NOT inside the graph: apply it first), "
                                      if model.preprocess.stain_norm else "")
                                   + "divide by 255; mean/std normalisation happens inside the model",
                  "mean": list(model.preprocess.mean), "std": list(model.preprocess.std),
                  "resize": model.preprocess.resize, "stain_norm": model.preprocess.stain_norm},
        "outputs": {"prob_malignant": f"probability of the malignant class, sigmoid(logit / {temperature:.6g}), "
                                      f"shape (batch,)",
                    "logit": "the raw logit (before the temperature), shape (batch,)"},
        "class_names": list(CLASS_NAMES),
        "positive_class": "malignant",
        "threshold": threshold,
        "temperature": temperature,
        "operating_point": point,
        "backbone": model.hparams.model["name"],
        "initialisation": initialisation_text(model.hparams.get("initialisation")),
        "timm_architecture": model.backbone_arch,
        "source_checkpoint": str(ckpt.resolve()),
        "source_checkpoint_sha256": sha256_file(ckpt),
        "trained_on": data_info.get("root"),
        "synthetic_training_data": bool(data_info.get("synthetic_data")),
        "torch_version": torch.__version__,
    }
    if fmt == "onnx":
        sidecar["opset"] = opset
    if check:
        sidecar["parity"] = check_parity(wrapper, out, fmt, size)
    write_json(out.with_suffix(out.suffix + ".json"), sidecar)
    return sidecar


def run_exported(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Malignant probabilities from the exported file alone (ONNX Runtime, or torch.jit for TorchScript)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["prob_malignant"], {"images": images.astype(np.float32)})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(images))[0].numpy()


def check_parity(wrapper: nn.Module, path: Path, fmt: str, size: int, tolerance: float = 1e-4) -> dict[str, Any]:
    """Exported vs PyTorch probabilities on random inputs, at two batch sizes (the batch axis is dynamic)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch in (1, 5):
        images = rng.random((batch, 3, size, size), dtype=np.float32)
        with torch.no_grad():
            reference = wrapper(torch.from_numpy(images))[0].numpy()
        exported = run_exported(path, fmt, images)
        worst = max(worst, float(np.max(np.abs(reference - exported))))
    if worst > tolerance:
        raise UserError(f"The exported {fmt} model differs from PyTorch by {worst:.2e} (> {tolerance:g}); it is "
                        f"kept at {path} for inspection but should not be deployed. Try another opset or format.")
    return {"max_abs_diff": worst, "tolerance": tolerance, "batch_sizes": [1, 5]}
