"""Checkpoints: read weights-only, rebuild the model from the checkpoint's own hyperparameters, write atomically.

A checkpoint can also carry its evaluated operating point (`bcc-eval ... save_to=model.ckpt` writes such a copy):
threshold and how it was chosen, temperature, TTA views, preprocessing, group rule and provenance, under the key
DEPLOYMENT_KEY. Predict, export and serve read it from there with threshold=auto, wherever the file lies.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bcc_lightning.models.backbones import recorded_hf_hub_config
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.utils.atomic_io import atomic_write, sha256_file
from bcc_lightning.utils.config import parse_auto_bool
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


# ------------------------------------------------------------------------------------------- the deployable point

DEPLOYMENT_KEY = "bcc_deployment"
DEPLOYMENT_VERSION = 1
# Training state a deployed model does not need (and a resume from the copy would not expect): left out of save_to.
_TRAINING_STATE = ("optimizer_states", "lr_schedulers", "loops")


def how_to_get_a_point(ckpt: str | Path) -> str:
    return (f"Turn an evaluation into the model to ship with "
            f"`bcc-eval ckpt={ckpt} threshold=youden save_to=model.ckpt` (any threshold method; add "
            f"calibrate=temperature and tta=true as wanted) and use ckpt=model.ckpt, or give the threshold yourself: "
            f"threshold=0.5, or threshold=PATH/metrics.json of an evaluation")


def deployment_point(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The evaluated operating point a checkpoint carries (validated), or None when it carries none."""
    point = checkpoint.get(DEPLOYMENT_KEY)
    if point is None:
        return None
    threshold, temperature = point.get("threshold") if isinstance(point, dict) else None, None
    if isinstance(point, dict):
        temperature = point.get("temperature", 1.0)
    ok = (isinstance(threshold, (int, float)) and 0 <= threshold <= 1 and isinstance(temperature, (int, float))
          and math.isfinite(temperature) and temperature > 0 and isinstance(point.get("tta"), bool))
    if not ok:
        raise UserError(f"{path} carries an operating point that is not valid (threshold {threshold!r}, temperature "
                        f"{temperature!r}); it was edited or written by another version. " + how_to_get_a_point(path)
                        + ".")
    return dict(point)


def check_save_to(out: str | Path, source: str | Path) -> Path:
    """save_to's path, checked before any work: a new .ckpt file in an existing folder."""
    out = Path(out).expanduser()
    if out.suffix != ".ckpt":
        raise UserError(f"save_to={out} should end in .ckpt: it is a checkpoint that predict, export and serve take "
                        f"as ckpt=.")
    if out.exists():
        same = out.resolve() == Path(source).resolve()
        raise UserError(f"save_to={out} " + ("is the evaluated checkpoint itself" if same else "already exists")
                        + ": it is never overwritten. Pass a new file name (or delete the old file first).")
    if not out.parent.is_dir():
        raise UserError(f"save_to={out}: the folder {out.parent} does not exist; create it or pass another path.")
    return out


def write_deployable(source: Path, checkpoint: dict[str, Any], point: dict[str, Any], out: Path) -> Path:
    """A new checkpoint at `out`: the source's weights and hyperparameters plus the evaluated point, written
    atomically (a crash leaves no half file). Never overwrites the source or any existing file."""
    out = check_save_to(out, source)
    body = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE}
    body[DEPLOYMENT_KEY] = {**point, "version": DEPLOYMENT_VERSION,
                            "source_checkpoint": str(Path(source).resolve()),
                            "source_checkpoint_sha256": sha256_file(source)}
    atomic_write(out, lambda tmp: torch.save(body, tmp), fsync=True)
    return out


def parse_tta(value: Any) -> bool | None:
    """tta= of predict, export and serve: True, False, or None for auto (the operating point's own views)."""
    try:
        return parse_auto_bool(value)
    except ValueError:
        raise UserError(f"tta must be auto (the views the operating point was chosen with), true (the 8 flips and "
                        f"rotations) or false (the image alone); got {value!r}.") from None


def resolve_tta(requested: Any, point: dict[str, Any]) -> bool:
    """Whether to average the 8 TTA views: the operating point's own views by default. A threshold chosen on val
    (or a fitted temperature) belongs to the probabilities it was chosen on, so asking for the other kind is
    refused: single-view probabilities are on another scale than 8-view means (a simulated sensitivity@0.95 point
    fell from 0.94 to 0.81 applied without its TTA)."""
    wanted, point_tta = parse_tta(requested), point.get("tta")
    if wanted is None:
        return bool(point_tta)
    chosen = point.get("chosen_on") is not None or float(point.get("temperature", 1.0)) != 1.0
    if not isinstance(point_tta, bool) or not chosen or wanted == point_tta:
        return wanted
    had, asked = ("with TTA (the mean of 8 views)", "without") if point_tta else ("on single views", "with")
    raise UserError(
        f"The operating point (threshold {float(point['threshold']):.4g}, {point.get('method')}, from "
        f"{point.get('source', 'the checkpoint')}) was chosen {had}; applying it {asked} TTA puts the threshold on "
        f"probabilities of another scale, and its sensitivity and specificity no longer hold. Leave tta=auto to "
        f"apply the point as evaluated, or pass your own threshold=NUMBER with tta={str(wanted).lower()}, or "
        f"evaluate that way: `bcc-eval ... tta={str(wanted).lower()} save_to=NEW.ckpt`.")


def point_label(point: dict[str, Any]) -> str:
    """How the threshold was chosen, with its temperature, views and source (predictions.csv's threshold_method)."""
    text = str(point.get("method", "fixed"))
    if point.get("chosen_on"):
        text += f", chosen on {point['chosen_on']}"
    temperature = float(point.get("temperature", 1.0))
    if temperature != 1.0:
        text += f"; temperature T = {temperature:.6g}"
    if point.get("tta") is True:
        text += "; TTA (8 views)"
    return text + (f"; from {point['source']}" if point.get("source") else "")
