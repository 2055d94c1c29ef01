"""Batched inference shared by evaluation, predict, compare, bench and serving: logits per TTA view, probabilities,
and the fast path (the forward pass in ONNX Runtime).

The eager loop, the views and the probabilities are models.views' (which the exporter's parity check runs too); this
module puts the fast path into that loop. It imports the exporter, never the other way round.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from bcc_lightning.models.export import GraphSpec, check_parity, export_graph, onnx_session
from bcc_lightning.models.views import view_logits, view_probabilities
from bcc_lightning.utils.config import log, parse_auto_bool
from bcc_lightning.utils.errors import UserError

# ----------------------------------------------------------------------------------------------- fast path
# `fast` runs the forward pass in ONNX Runtime (fp32) instead of eager PyTorch: on this project's 2-core AVX-512 CPU
# it gave 3.0-3.6x the images per second of the eager bf16 path, while torch.compile gave 1.1-1.6x after minutes of
# compiling (benchmarks/inference.py; README "Inference fast path"). Its session is built once per model object
# and kept while the weights are unchanged. Grad-CAM needs gradients and keeps using the eager model.

FAST_CHOICES = ("auto", "true", "false")
# `auto` turns the fast path on from this many forward images (images x TTA views) on a CPU. Break-even is
# setup / (1/eager - 1/fast): with the measured setup (export + session, 1-3 s MobileNetV2, 3-6 s DenseNet121) and
# rates it came to 22-76 images on the shared machine; on a quiet one (eager MobileNetV2 at 345 img/s, setup ~1 s,
# 3x) it would be ~520. Starting at 512 keeps auto from ever costing noticeable time.
FAST_AUTO_MIN_IMAGES = 512


def _fast_spec() -> GraphSpec:
    return GraphSpec(input="uint8_nchw", outputs=("logit",))


def parse_fast(value: Any) -> bool | str:
    """The `inference.fast` value: True, False or "auto"."""
    try:
        choice = parse_auto_bool(value)
    except ValueError:
        raise UserError(f"inference.fast must be one of {', '.join(FAST_CHOICES)} (got {value!r}): auto runs ONNX "
                        f"Runtime when at least {FAST_AUTO_MIN_IMAGES} images are scored on a CPU, true always, false "
                        f"never (the eager PyTorch model).") from None
    return "auto" if choice is None else choice


def want_fast(fast: Any, n_images: int | None, device: torch.device) -> bool:
    """Whether to use the fast path for `n_images` forward images (images x views; None: unknown) on `device`."""
    choice = parse_fast(fast)
    if device.type != "cpu":
        if choice is True:
            log.info("Inference fast path: ONNX Runtime runs on the CPU only; using the eager model on %s.",
                     device.type)
        return False  # on a GPU the eager model is the fast path: nothing was measured to beat it there
    if choice == "auto":
        return n_images is not None and n_images >= FAST_AUTO_MIN_IMAGES
    return bool(choice)


def onnx_bytes(model: nn.Module, size: int) -> bytes:
    """The fast path's graph: uint8 pixels (N, 3, S, S) in, the logit (N,) out, normalisation inside, fp32. Built by
    the one exporter (models.export), the same code and opset as bcc-export's graph."""
    if int(model.preprocess.img_size) != size:  # type: ignore[union-attr]
        raise ValueError(f"the model's input size is {model.preprocess.img_size}, not {size}")  # type: ignore[union-attr]
    return export_graph(model, _fast_spec())


class OnnxRunner:
    """ONNX Runtime (CPU, fp32, every graph optimisation, one intra-op thread per torch thread) on the model's
    exported graph: uint8 batches (N, 3, S, S) of any N -> fp32 logits (N,), as model(batch) gives them. The graph
    passes models.export.check_parity against the eager model before it is used."""

    def __init__(self, model: nn.Module, size: int, threads: int | None = None, check: bool = True) -> None:
        self.size = size
        self.session = onnx_session(onnx_bytes(model, size), threads or torch.get_num_threads())
        if check:
            parity = check_parity(model, self.session, _fast_spec(), batches=(2,))
            if not parity["passed"]:
                raise RuntimeError(f"the ONNX graph differs from the eager model by {parity['max_abs_diff']:.2e}")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.to("cpu", torch.uint8).contiguous().numpy()  # TTA's views are strided: one copy
        return torch.from_numpy(self.session.run(["logit"], {"images": pixels})[0])


# model -> (weights version, runner or None when it could not be built); weak, so a dropped model frees its session
_RUNNERS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], OnnxRunner | None]] = \
    weakref.WeakKeyDictionary()


def _weights_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever a weight or buffer is replaced or updated in place (optimizer steps, load_state_dict)."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple(t.data_ptr() for t in tensors) + tuple(t._version for t in tensors)


def fast_runner(model: nn.Module) -> OnnxRunner | None:
    """The model's ONNX Runtime session, built on first use and cached; None, with one log line, when it cannot be
    built (onnxruntime missing, an operator the exporter does not know): the caller then runs the eager model."""
    version = _weights_version(model)
    cached = _RUNNERS.get(model)
    if cached is not None and cached[0] == version:
        return cached[1]
    start = time.perf_counter()
    runner: OnnxRunner | None
    try:
        size = int(model.preprocess.img_size)  # type: ignore[union-attr]
        runner = OnnxRunner(model, size)
        log.info("Inference fast path: ONNX Runtime (fp32), session built in %.1f s.", time.perf_counter() - start)
    except Exception as exc:  # never fail a prediction because of the fast path
        log.warning("Inference fast path unavailable (%s: %s); using the eager model.", type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "")
        runner = None
    _RUNNERS[model] = (version, runner)
    return runner


def _forward(model: nn.Module, runner: OnnxRunner | None, images: torch.Tensor) -> tuple[torch.Tensor,
                                                                                          OnnxRunner | None]:
    """Logits of one view, by the runner when it applies (uint8 pixels at its size), else the eager model; a runner
    that fails is dropped for the rest of the call and for this model."""
    if runner is not None and images.dtype == torch.uint8 and images.shape[-1] == runner.size:
        try:
            return runner(images).to(images.device), runner
        except Exception as exc:
            log.warning("Inference fast path failed (%s: %s); using the eager model.", type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
            _RUNNERS[model] = (_weights_version(model), None)
            runner = None
    return model(images), runner


def predict_view_logits(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                        precision: Any = "auto", tta: bool = False, fast: Any = False,
                        n_images: int | None = None) -> torch.Tensor:
    """Logits (float32, on CPU) of shape (N, V): V = 8 dihedral views with TTA, else 1 (models.views.view_logits).

    fast: True, False or "auto" (see want_fast; `n_images`, the number of images in `batches`, decides auto). The
    fast path is fp32 whatever `precision` says; batches it cannot take (normalised floats) run eagerly."""
    model.eval().to(device)
    runner = None
    if fast is not False and want_fast(fast, None if n_images is None else n_images * (8 if tta else 1), device):
        runner = fast_runner(model)
    if runner is None:
        return view_logits(model, batches, device, precision, tta)
    held = [runner]  # a runner that fails is dropped for the rest of the call

    def forward(view: torch.Tensor) -> torch.Tensor:
        logits, held[0] = _forward(model, held[0], view)
        return logits

    return view_logits(model, batches, device, precision, tta, forward=forward)


def predict_batches(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device,
                    precision: Any = "auto", tta: bool = False, temperature: float = 1.0, fast: Any = False,
                    n_images: int | None = None) -> torch.Tensor:
    """Malignant probabilities (float64, on CPU) for image batches: uint8 pixels, or floats already normalised."""
    logits = predict_view_logits(model, batches, device, precision, tta, fast=fast, n_images=n_images)
    return view_probabilities(logits, temperature)[0]
