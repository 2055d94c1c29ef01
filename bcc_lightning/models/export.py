"""One ONNX export, parametrised by its input and outputs, and one parity check.

Both the inference fast path (models.inference: uint8 pixels in, the logit out) and `bcc-export` (by default 0-1
floats in, the probability and the logit out) build their graph here, with the same opset, and both are checked by
`check_parity` against the eager path that predict runs (stain normalisation per image, the model, the TTA views,
sigmoid(logit / T) averaged over the views).

What the graph holds, in order:
1. input -> float pixels on the 0-255 scale: `float01_nchw` (RGB in [0, 1], (N, 3, S, S)), `uint8_nchw` or
   `uint8_nhwc` (8-bit RGB, (N, 3, S, S) or (N, S, S, 3)); always already resized to S x S (whole image, no crop).
2. Reinhard stain normalisation, when the checkpoint's preprocessing has it: its target statistics are fixed numbers
   and the rest (each image's own LAB mean and std) is arithmetic, so the graph reproduces torchstain's map,
   including the pass-through of blank tiles. Macenko estimates each image's stain matrix by an eigen-decomposition
   and percentiles, which ONNX has no operator for: such a model is refused unless the caller asks for a graph
   without it (the sidecar then says so and carries the fitted numbers).
3. the views: the 8 flips / 90-degree rotations when the operating point was chosen with TTA, else the image alone.
4. the model (mean/std normalisation inside), fp32.
5. outputs: `logit` ((N,) for one view, (N, 8) for the views) and/or `prob_malignant` (N,), the mean over the views
   of sigmoid(logit / T), T being the operating point's temperature.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.models.backbones import initialisation_text
from bcc_lightning.models.checkpoint import load_checkpoint, read_checkpoint
from bcc_lightning.models.views import TTA_VIEWS, view_logits, view_probabilities
from bcc_lightning.utils.atomic_io import atomic_write, sha256_file, write_json
from bcc_lightning.utils.errors import UserError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUTS = ("float01_nchw", "uint8_nchw", "uint8_nhwc")
OUTPUTS = ("prob_malignant", "logit")
OPSET = 17
IN_GRAPH_STAIN = ("reinhard",)


@dataclass(frozen=True)
class GraphSpec:
    """What one exported graph takes and gives (see the module docstring)."""

    input: str = "float01_nchw"
    outputs: tuple[str, ...] = OUTPUTS
    temperature: float = 1.0
    views: int = 1  # 1, or 8 for the dihedral TTA views
    stain_norm: dict[str, Any] | None = field(default=None, hash=False)  # applied in the graph (Reinhard)

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise UserError(f"input must be one of {', '.join(INPUTS)} (got {self.input!r}).")
        if not self.outputs or any(o not in OUTPUTS for o in self.outputs):
            raise UserError(f"outputs must be some of {', '.join(OUTPUTS)} (got {self.outputs!r}).")
        if self.views not in (1, TTA_VIEWS):
            raise ValueError(f"views must be 1 or {TTA_VIEWS}, got {self.views}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"The operating point's temperature must be a positive number (got {self.temperature}); "
                            f"re-run `bcc-eval ... calibrate=temperature` or pass a plain threshold.")


class ReinhardNorm(nn.Module):
    """torchstain's Reinhard normalisation (as data.stain.StainNormaliser applies it) on a batch of float pixels
    (N, 3, H, W) on the 0-255 scale, in exportable operations: the same constants and the same order of float32
    operations, so that the result is torchstain's uint8 image (floor of the clamped value), bar rounding ties."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        from torchstain.torch.utils.lab2rgb import _xyz2rgb
        from torchstain.torch.utils.rgb2lab import _rgb2xyz, _white

        from bcc_lightning.data.stain import MIN_TISSUE_FRACTION

        self.register_buffer("rgb2xyz", _rgb2xyz.clone().float(), persistent=False)
        self.register_buffer("xyz2rgb", _xyz2rgb.clone().float(), persistent=False)
        self.register_buffer("white", _white.clone().float().view(1, 3, 1, 1), persistent=False)
        self.register_buffer("target_means", torch.tensor(state["means"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("target_stds", torch.tensor(state["stds"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.min_tissue = float(MIN_TISSUE_FRACTION)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # Blank tiles pass through unchanged (data.stain.tissue_fraction < MIN_TISSUE_FRACTION).
        od = -torch.log((pixels + 1) / 240.0)
        tissue = (od >= 0.15).any(dim=1).float().mean(dim=(1, 2)).view(-1, 1, 1, 1)
        rgb = pixels / 255
        lin = torch.where(rgb > 0.04045, torch.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
        xyz = torch.einsum("kc,nchw->nkhw", self.rgb2xyz, lin) * (1 / self.white)
        f = torch.where(xyz > 0.008856, torch.pow(xyz, 1 / 3), 7.787 * xyz + 16 / 116)
        lab = torch.stack([((116.0 * f[:, 1]) - 16.0) * 2.55, 500.0 * (f[:, 0] - f[:, 1]) + 128,
                           200.0 * (f[:, 1] - f[:, 2]) + 128], dim=1)
        lab = torch.stack([lab[:, 0] / 2.55, lab[:, 1] - 128, lab[:, 2] - 128], dim=1)  # torchstain's lab_split
        n = lab.shape[2] * lab.shape[3]
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = torch.sqrt(((lab - mean) ** 2).sum(dim=(2, 3), keepdim=True) / (n - 1))  # torch.std: unbiased
        lab = (lab - mean) / std * self.target_stds + self.target_means
        lab = torch.stack([lab[:, 0] * 2.55, lab[:, 1] + 128, lab[:, 2] + 128], dim=1)  # lab_merge
        big_l, a, b = lab[:, 0] / 2.55, lab[:, 1] - 128, lab[:, 2] - 128
        y = (big_l + 16.0) / 116.0
        out = torch.stack([(a / 500.0) + y, y, y - (b / 200.0)], dim=1)
        out = torch.where(out > 0.2068966, torch.pow(out, 3), (out - 16 / 116) / 7.787) * self.white
        arr = torch.einsum("nchw,kc->nkhw", out, self.xyz2rgb)
        arr = torch.where(arr > 0.0031308, 1.055 * torch.pow(arr, 1 / 2.4) - 0.055, arr * 12.92)
        normalised = torch.floor(torch.clamp(arr, 0, 1) * 255)  # (x * 255).type(uint8) truncates
        return torch.where(tissue < self.min_tissue, pixels, normalised)


def dihedral(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 views in models.views.dihedral_views' order, from flips and transposes (which ONNX exports)."""
    views = []
    rotated = images
    for _ in range(4):
        views += [rotated, torch.flip(rotated, dims=(-1,))]
        rotated = torch.flip(rotated, dims=(-1,)).transpose(-2, -1)  # rot90 by one more quarter turn
    return views


class Deployable(nn.Module):
    """Input conversion + stain normalisation + views + network + sigmoid(logit / T), fp32, one graph."""

    def __init__(self, model: nn.Module, spec: GraphSpec) -> None:
        super().__init__()
        self.spec = spec
        self.normalise, self.backbone, self.head = model.normalise, model.backbone, model.head
        self.stain = ReinhardNorm(spec.stain_norm) if spec.stain_norm else None
        self.temperature = float(spec.temperature)

    def forward(self, images: torch.Tensor) -> Any:
        spec = self.spec
        if spec.input == "uint8_nhwc":
            images = images.permute(0, 3, 1, 2)
        pixels = images.float() * 255 if spec.input == "float01_nchw" else images.float()
        if self.stain is not None:
            pixels = self.stain(pixels)
        views = dihedral(pixels) if spec.views > 1 else [pixels]
        logits = torch.stack([self.head(self.backbone(self.normalise(v))).squeeze(-1) for v in views], dim=1)
        results = {"logit": logits if spec.views > 1 else logits[:, 0],
                   "prob_malignant": torch.sigmoid(logits / self.temperature).mean(dim=1)}
        out = tuple(results[name] for name in spec.outputs)
        return out if len(out) > 1 else out[0]


def _export_ready(model: nn.Module) -> nn.Module:
    """A copy of the model for export: fp32 channels-first weights; the caller's model stays as it is."""
    import copy

    clone = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()
    clone.channels_last = False
    return clone


def example_input(spec: GraphSpec, size: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(random uint8 pixels (N, 3, S, S), the same images as the graph's input)."""
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    if spec.input == "float01_nchw":
        return pixels, pixels.float() / 255
    if spec.input == "uint8_nhwc":
        return pixels, pixels.permute(0, 2, 3, 1).contiguous()
    return pixels, pixels


def graph_module(model: nn.Module, spec: GraphSpec) -> Deployable:
    return Deployable(_export_ready(model), spec).eval()


def export_graph(model: nn.Module, spec: GraphSpec, fmt: str = "onnx", opset: int = OPSET) -> bytes:
    """The one exporter: the model as an ONNX (or TorchScript) graph described by `spec`, as bytes."""
    wrapper = graph_module(model, spec)
    size = int(model.preprocess.img_size)
    example = example_input(spec, size, 2)[1]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.autocast("cpu", enabled=False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        if fmt == "onnx":
            axes = {"images": {0: "batch"}, **{name: {0: "batch"} for name in spec.outputs}}
            torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=list(spec.outputs), dynamic_axes=axes)
        else:
            torch.jit.save(torch.jit.trace(wrapper, example), buffer)
    return buffer.getvalue()


def onnx_session(data: bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime session (CPU, every graph optimisation) on a graph's bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run_graph(runner: Any, fmt: str, images: np.ndarray, output: str = "prob_malignant") -> np.ndarray:
    """One output of an exported graph (an ONNX Runtime session or a loaded TorchScript module)."""
    if fmt == "onnx":
        names = [o.name for o in runner.get_outputs()]
        return runner.run([output], {"images": images})[0] if output in names else None
    with torch.no_grad():
        result = runner(torch.from_numpy(images))
    names = list(getattr(runner, "_bcc_outputs", OUTPUTS))
    result = result if isinstance(result, tuple) else (result,)
    return result[names.index(output)].numpy() if output in names else None


def load_exported(path: Path, fmt: str) -> Any:
    if fmt == "onnx":
        return onnx_session(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def run_exported(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Malignant probabilities from an exported file alone (bcc-export's default outputs)."""
    return run_graph(load_exported(path, fmt), fmt, images)


def eager_reference(model: nn.Module, pixels: torch.Tensor, spec: GraphSpec,
                    stain_norm: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """What predict computes for these uint8 pixels: stain normalisation per image (data.preprocess), the views,
    the eager model in fp32, and the probability in float64 (models.views: the loop predict runs with fast=false)."""
    from bcc_lightning.data.preprocess import apply_stain_norm

    if stain_norm:
        pre = replace(model.preprocess, stain_norm=stain_norm)
        pixels = torch.stack([apply_stain_norm(p, pre) for p in pixels])
    logits = view_logits(model, [pixels], torch.device("cpu"), "32-true", tta=spec.views > 1)
    probs = view_probabilities(logits, spec.temperature)[0]
    return {"logit": (logits if spec.views > 1 else logits[:, 0]).numpy(), "prob_malignant": probs.numpy()}


def check_parity(model: nn.Module, runner: Any, spec: GraphSpec, fmt: str = "onnx", batches: tuple[int, ...] = (1, 5),
                 tolerance: float = 1e-4, stain_norm: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one parity check: the exported graph against the eager path predict runs, on random uint8 images fed in
    the graph's own input form, at several batch sizes (the batch axis is dynamic), for every output.
    `stain_norm`: the normalisation the eager side applies (the graph's own, or the one left out of it)."""
    size = int(model.preprocess.img_size)
    worst = 0.0
    for seed, batch in enumerate(batches):
        pixels, graph_input = example_input(spec, size, batch, seed=seed + 1)
        reference = eager_reference(model, pixels, spec, stain_norm)
        for name in spec.outputs:
            exported = run_graph(runner, fmt, graph_input.numpy(), name)
            worst = max(worst, float(np.max(np.abs(np.asarray(exported, dtype=np.float64) - reference[name]))))
    return {"max_abs_diff": worst, "tolerance": tolerance, "batch_sizes": list(batches), "passed": worst <= tolerance,
            "against": "the eager PyTorch path of bcc-predict (fp32), random 8-bit images"}


# ----------------------------------------------------------------------------------------------- bcc-export

def graph_spec_for(model: nn.Module, point: dict[str, Any], tta: bool, input_form: str = "float01_nchw",
                   without_stain_norm: bool = False) -> GraphSpec:
    """The graph bcc-export writes for this model and operating point; refuses a stain normalisation the graph cannot
    hold unless `without_stain_norm`."""
    stain = model.preprocess.stain_norm
    if stain and not without_stain_norm and stain.get("method") not in IN_GRAPH_STAIN:
        raise UserError(
            f"This model was trained with {stain.get('method')} stain normalisation, which estimates each image's "
            f"stain matrix (an eigen-decomposition and percentiles) and cannot be written into an ONNX graph. "
            f"Export a graph without it with without_stain_norm=true and apply the normalisation before the graph "
            f"with the fitted numbers in the sidecar (input.stain_norm; torchstain's Macenko), or train with "
            f"data.stain_norm=reinhard, which the graph holds.")
    return GraphSpec(input=input_form, outputs=OUTPUTS, temperature=float(point.get("temperature", 1.0)),
                     views=TTA_VIEWS if tta else 1, stain_norm=None if without_stain_norm else stain)


def export_model(ckpt: Path, fmt: str, out: Path, threshold: float = 0.5, opset: int = OPSET,
                 check: bool = True, operating_point: dict[str, Any] | None = None, tta: bool = False,
                 input_form: str = "float01_nchw", without_stain_norm: bool = False) -> dict[str, Any]:
    """Export the checkpoint's model (graph_spec_for) and write the sidecar JSON beside it; `operating_point`
    (threshold, method, chosen_on, temperature, TTA, source) is recorded in the sidecar and its temperature and
    views are in the graph. The parity check runs before the file is published: a failing graph is not written."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {list(FORMATS)}; got {fmt!r}.")
    ckpt = Path(ckpt)
    checkpoint = read_checkpoint(ckpt)
    model = load_checkpoint(ckpt, checkpoint).float()
    point = operating_point or {"threshold": threshold, "method": "fixed", "chosen_on": None}
    threshold = float(point.get("threshold", threshold))
    spec = graph_spec_for(model, point, tta, input_form, without_stain_norm)
    data = export_graph(model, spec, fmt, opset)
    parity = None
    if check:
        if fmt == "onnx":
            runner = onnx_session(data)
        else:
            runner = torch.jit.load(io.BytesIO(data), map_location="cpu")
        parity = check_parity(model, runner, spec, fmt, stain_norm=model.preprocess.stain_norm if spec.stain_norm
                              else None)
        if not parity["passed"]:
            raise UserError(f"The exported {fmt} graph differs from the PyTorch model by {parity['max_abs_diff']:.2e} "
                            f"(> {parity['tolerance']:g}); nothing was written. Try another opset or format.")
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))

    size = model.preprocess.img_size
    pre = model.preprocess
    data_info = checkpoint["hyper_parameters"].get("data_info") or {}
    # Which resize implementation training used (the two differ by at most one grey level).
    resizer = "torchvision's uint8 tensor resize" if pre.resize == "tensor" else "Pillow's resize"
    stain = pre.stain_norm
    if stain and spec.stain_norm:
        stain_text = f"{stain['method']} stain normalisation happens inside the graph; "
    elif stain:
        stain_text = (f"then apply {stain['method']} stain normalisation with input.stain_norm's fitted numbers "
                      f"(NOT inside the graph: exported with without_stain_norm=true), ")
    else:
        stain_text = ""
    shape = ["batch", size, size, 3] if spec.input == "uint8_nhwc" else ["batch", 3, size, size]
    scale = "divide by 255, " if spec.input == "float01_nchw" else ""
    views = ("the mean over the 8 flips/90-degree rotations (TTA, as the operating point was chosen) of "
             if spec.views > 1 else "")
    sidecar = {
        "format": fmt,
        "model_file": out.name,
        "input": {"name": "images", "shape": shape, "dtype": "float32" if spec.input == "float01_nchw" else "uint8",
                  "range": [0.0, 1.0] if spec.input == "float01_nchw" else [0, 255], "form": spec.input,
                  "channels": "RGB", "layout": "NHWC" if spec.input == "uint8_nhwc" else "NCHW",
                  "preprocessing": f"decode to 8-bit RGB, resize the whole image to {size}x{size} "
                                   f"({pre.interpolation}, antialiased, no crop; {resizer}), " + stain_text + scale
                                   + "mean/std normalisation happens inside the model",
                  "mean": list(pre.mean), "std": list(pre.std), "resize": pre.resize, "stain_norm": stain,
                  "stain_norm_in_graph": bool(spec.stain_norm)},
        "outputs": {"prob_malignant": f"probability of the malignant class, {views}sigmoid(logit / "
                                      f"{spec.temperature:.6g}), shape (batch,)",
                    "logit": ("the 8 views' raw logits, shape (batch, 8)" if spec.views > 1
                              else "the raw logit (before the temperature), shape (batch,)")},
        "class_names": list(CLASS_NAMES),
        "positive_class": "malignant",
        "threshold": threshold,
        "temperature": spec.temperature,
        "tta_views": spec.views,
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
    if parity is not None:
        sidecar["parity"] = parity
    write_json(out.with_suffix(out.suffix + ".json"), sidecar)
    return sidecar
