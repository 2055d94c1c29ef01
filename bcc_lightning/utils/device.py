"""Device, precision and loader-worker choice: one place decides them for training, evaluation, predict and bench."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """`auto`: bf16 autocast on GPUs that run it natively (Ampere+), fp16 autocast on older ones; fp32 on a CPU.

    On the CPU bf16 autocast did not pay, even with AVX-512-BF16: the training step, eager and channels-last, ran at
    the same speed as fp32 for MobileNetV2 and at half of it for DenseNet121 (casts around every layer of its
    concatenations), and inference likewise (README, "Performance"). trainer.precision=bf16-mixed still asks for it."""
    if str(precision) != "auto":
        return precision
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def check_accelerator(accelerator: Any, devices: Any = None) -> None:
    """Raise a UserError when `trainer.accelerator` (and `trainer.devices`) asks for hardware this machine lacks,
    before Lightning does so with a long traceback."""
    from bcc_lightning.utils.errors import UserError

    accelerator = str(accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" CUDA_VISIBLE_DEVICES is {visible!r}." if visible is not None else ""
        raise UserError(f"trainer.accelerator={accelerator} but PyTorch sees no CUDA GPU on this machine (torch "
                        f"{torch.__version__}, built {build}).{hint} Use trainer.accelerator=auto (a GPU when there "
                        f"is one, else the CPU) or trainer.accelerator=cpu, or install a CUDA build of PyTorch that "
                        f"matches the driver (`nvidia-smi` shows it).")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.accelerator=mps but Apple's Metal backend is not available here (it needs an Apple "
                        "silicon Mac and a PyTorch built with MPS). Use trainer.accelerator=auto or "
                        "trainer.accelerator=cpu.")
    wants_cuda = accelerator in ("gpu", "cuda")
    if wants_cuda and isinstance(devices, int) and not isinstance(devices, bool):
        count = torch.cuda.device_count()
        if devices > count:
            raise UserError(f"trainer.devices={devices} but this machine has {count} CUDA GPU"
                            f"{'' if count == 1 else 's'}. Use trainer.devices={count} or fewer, or "
                            f"trainer.devices=auto.")


def pick_device(accelerator: str = "auto") -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: Any) -> contextlib.AbstractContextManager:
    precision = str(resolve_precision(precision, device.type if device.type != "cuda" else "gpu"))
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def resolve_num_workers(num_workers: int | str, gpu: bool) -> int:
    """`auto`: up to 4 when the CPU also trains (one worker already outpaces the model there, and the model needs
    the cores); when a GPU trains, every core but two (the main process and the pin-memory thread), up to 16, since
    the GPU consumes images several times faster than one worker decodes."""
    if num_workers != "auto":
        return int(num_workers)
    cores = os.cpu_count() or 1
    if gpu:
        return max(1, min(cores - 2, 16))
    return min(4, cores)
