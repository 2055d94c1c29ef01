"""The timed pieces of bcc-bench that benchmarks/ reuse: the model it measures, one training step as Lightning takes
it, the model-step rate (the compute floor), and a device sync for honest clocks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.utils.config import to_dict
from bcc_lightning.utils.device import autocast_for


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read afterwards times it (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(cfg: DictConfig, channels_last: bool) -> BCCClassifier:
    """The config's model with seeded random weights (a speed measurement needs no trained ones, and none load)."""
    torch.manual_seed(0)
    model = {**to_dict(cfg.model), "pretrained": False, "weights": None, "channels_last": channels_last}
    return BCCClassifier(model, to_dict(cfg.optimizer), load_weights=False)


def train_step_fn(model: BCCClassifier, device: torch.device, precision: Any) -> Callable[[Any], None]:
    """One optimizer step on a batch (images, labels), as Lightning runs it: autocast, the loss, backward, step."""
    model.to(device).train()
    optimizer = model.configure_optimizers()  # the optimizer Lightning gets: same groups, same settings

    def step(batch: Any) -> None:
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with autocast_for(device, precision):
            logits = model(images).float()
        loss = model.loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def model_step_rate(model: BCCClassifier, cfg: DictConfig, device: torch.device, precision: Any) -> tuple[int, float]:
    """(images, seconds) of `cfg.steps` training steps on one batch of tensors in memory, after `cfg.warmup`: the
    compute floor, no loader (`cfg` as conf/bench.yaml: data.batch_size, warmup, steps)."""
    step = train_step_fn(model, device, precision)
    # uint8 pixels, as the loader delivers them (the model normalises on its device).
    size = model.preprocess.img_size
    batch = (torch.randint(0, 256, (cfg.data.batch_size, 3, size, size), dtype=torch.uint8, device=device),
             torch.randint(0, 2, (cfg.data.batch_size,), device=device).float())
    for _ in range(cfg.warmup):
        step(batch)
    sync_device(device)
    start = time.perf_counter()
    for _ in range(cfg.steps):
        step(batch)
    sync_device(device)
    return cfg.data.batch_size * cfg.steps, time.perf_counter() - start
