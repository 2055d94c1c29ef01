"""Shared pieces of the task modules: config helpers, precision choice, the run directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("bcc_lightning")


def to_dict(cfg: Any) -> Any:
    """Plain Python containers (checkpoints must not hold OmegaConf objects: weights-only loading refuses them)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def run_dir() -> Path:
    """The Hydra run (or multirun job) directory; the current directory outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under Hydra (tests, notebooks)
        return Path.cwd()
    return Path(hydra_cfg.runtime.output_dir or hydra_cfg.run.dir)


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_precision(precision: Any, accelerator: str) -> Any:
    """`auto`: bf16 autocast where the hardware runs it natively (Ampere+ GPUs, AVX-512-BF16/AMX CPUs); fp16 autocast
    on older GPUs; else fp32."""
    if str(precision) != "auto":
        return precision
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_has_bf16():
        return "bf16-mixed"
    return "32-true"
