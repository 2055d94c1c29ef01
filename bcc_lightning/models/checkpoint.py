"""Checkpoints: read weights-only, rebuild the model from the checkpoint's own hyperparameters, write atomically."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bcc_lightning.models.backbones import recorded_hf_hub_config
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.utils.atomic_io import atomic_write
from bcc_lightning.utils.errors import UserError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded weights-only (plain tensors and containers; no code is unpickled)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist. Pass the .ckpt written by train.py, e.g. "
                        f"ckpt=outputs/train/<run>/checkpoints/last.ckpt.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's own message suggests weights_only=False, which would run arbitrary code: do not pass it on.
        detail = type(exc).__name__ if isinstance(exc, pickle.UnpicklingError) else f"{type(exc).__name__}: {exc}"
        raise UserError(
            f"Cannot load checkpoint {path} ({detail.splitlines()[0][:300]}). It may be truncated, corrupt, or not "
            f"written by bcc-lightning's train.py; use a .ckpt from a run's checkpoints/ folder."
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "model" not in (
            checkpoint.get("hyper_parameters") or {}):
        raise UserError(f"{path} is not a bcc-lightning checkpoint (no model hyperparameters inside); use a .ckpt "
                        f"written by train.py.")
    return checkpoint


def load_checkpoint(path: str | Path, checkpoint: dict[str, Any] | None = None) -> BCCClassifier:
    """Rebuild the model from a checkpoint's own hyperparameters (no config, no weight download)."""
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    hparams.pop("load_weights", None)
    # An hf-hub backbone is rebuilt from the architecture recorded at training time, not the Hugging Face cache.
    with recorded_hf_hub_config((hparams.get("initialisation") or {}).get("hf_hub")):
        model = BCCClassifier(**hparams, load_weights=False)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"Checkpoint {path} does not match the model its hyperparameters describe "
                        f"({str(exc).splitlines()[0][:200]}); was it edited or written by another version?") from exc
    return model.eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file, flushed and renamed into place: a crash mid-write leaves the
    previous file intact. They are read back weights-only (no pickled code runs), also when training resumes."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), fsync=True)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path)  # weights-only, on the CPU, with a clear error for a corrupt file
