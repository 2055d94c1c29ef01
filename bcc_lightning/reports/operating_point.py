"""Operating points (decision thresholds) and temperature scaling, both fitted on validation predictions.

Order: calibrate first, then choose the threshold.
1. `fit_temperature(val_labels, val_logits)` -> T.
2. `apply_temperature(val_logits, T)` -> calibrated validation probabilities.
3. `choose_threshold(val_labels, calibrated_val_probs, method)` -> threshold on the calibrated scale.
4. At test time: `apply_temperature(test_logits, T) >= threshold`.
A threshold chosen on uncalibrated probabilities is on another scale and must not be applied to calibrated ones.
`fit_operating_point` does steps 1-3 in this order.

A prediction is malignant when prob >= threshold.

Logits may be one per image (N,) or one per TTA view (N, V): the probability is then the mean over the views of
sigmoid(logit / T), the same rule as inference.view_probabilities, so T is fitted on what predict will compute.

`resolve_operating_point` turns predict's, export's and serve's `threshold=` (a number, an evaluation's metrics.json,
or `auto`: the point the checkpoint carries) into (threshold, operating point); the point carries the temperature
when the evaluation calibrated, and its TTA views.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import expit, logsumexp

from bcc_lightning.utils.errors import UserError

OPERATING_POINT_FORMS = ("youden", "f1", "sensitivity@X", "specificity@X", "a number in [0, 1]")
_TARGET = re.compile(r"^(sensitivity|specificity)@(.+)$")
_T_BOUNDS = (0.05, 20.0)
_TIE = 1e-12  # criterion values this close count as equal; equal criteria pick the lowest threshold


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold, how it was chosen, and what it achieves on the data it was chosen on."""

    threshold: float
    method: str
    criterion: str
    value: float | None  # the criterion's achieved value (None for a fixed threshold)
    sensitivity: float
    specificity: float
    f1: float
    youden: float
    n: int
    note: str | None = None  # e.g. a target that no threshold in [0, 1] reaches

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_operating_point(value: Any) -> str | float:
    """Validate a user's operating point: "youden", "f1", "sensitivity@X", "specificity@X" (0 < X < 1) or a
    fixed threshold in [0, 1]. Returns the canonical string, or the threshold as a float."""
    accepted = ("accepted: 'youden', 'f1', 'sensitivity@X' or 'specificity@X' with 0 < X < 1 "
                "(e.g. 'sensitivity@0.95'), or a fixed probability threshold between 0 and 1 (e.g. 0.5)")
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid operating point {value!r}; {accepted}")
    if isinstance(value, (int, float, np.floating, np.integer)):
        number = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("youden", "f1"):
            return text
        match = _TARGET.match(text.replace(" ", ""))
        if match:
            try:
                target = float(match.group(2))
            except ValueError:
                raise ValueError(f"invalid operating point {value!r}: {match.group(2)!r} is not a number; "
                                 f"{accepted}") from None
            if not 0 < target < 1:
                raise ValueError(f"invalid operating point {value!r}: the target must lie strictly between 0 and 1 "
                                 f"(a fraction, not a percentage); {accepted}")
            return f"{match.group(1)}@{target!r}"
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"invalid operating point {value!r}; {accepted}") from None
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise ValueError(f"invalid operating point {value!r}: a fixed threshold must lie in [0, 1]; {accepted}")
    return number


def _validate(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise ValueError(f"labels and probabilities differ in length: {len(y)} vs {len(p)}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (benign) or 1 (malignant)")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities must be finite")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        only = "benign (0)" if n_pos == 0 else "malignant (1)"
        raise ValueError(f"cannot choose a threshold: the validation predictions hold only {only} images "
                         f"({len(y)} in all); sensitivity and specificity need both classes")
    return y.astype(np.int64), p


def _summary(threshold: float, method: str, criterion: str, value: float | None, tp: float, fp: float, n_pos: int,
             n_neg: int, note: str | None = None) -> OperatingPoint:
    sens, spec = tp / n_pos, 1 - fp / n_neg
    f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
    # A threshold is a probability: predict refuses anything outside [0, 1] (e.g. 1.0000000000000002).
    threshold = min(max(float(threshold), 0.0), 1.0)
    return OperatingPoint(threshold, method, criterion, None if value is None else float(value), float(sens),
                          float(spec), float(f1), float(sens + spec - 1), n_pos + n_neg, note)


def choose_threshold(labels: Any, probs: Any, method: str | float) -> OperatingPoint:
    """Threshold on validation predictions, O(n log n): one sort, cumulative counts over distinct scores.

    Candidates are the distinct scores (prob >= score is malignant).
    - youden: maximises sensitivity + specificity - 1; f1: maximises F1. Ties: the lowest such threshold (the one
      that misses fewer malignant images).
    - sensitivity@X: the highest threshold whose sensitivity >= X, i.e. the best specificity under that constraint.
    - specificity@X: the lowest threshold whose specificity >= X, i.e. the best sensitivity under that constraint;
      if even the highest score leaves too many benign images above it, the threshold lies just above the highest
      score (nothing is called malignant).
    - a number: that fixed threshold.
    Raises ValueError when only one class is present or the method is invalid.
    """
    parsed = parse_operating_point(method)
    y, p = _validate(labels, probs)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if isinstance(parsed, float):
        pred = p >= parsed
        return _summary(parsed, str(parsed), "fixed threshold", None, float(np.sum(pred & (y == 1))),
                        float(np.sum(pred & (y == 0))), n_pos, n_neg)
    order = np.argsort(-p, kind="mergesort")
    scores = p[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each run of equal scores
    thresholds = scores[last]  # descending
    tps = np.cumsum(y[order])[last].astype(np.float64)
    fps = (last + 1) - tps
    sens, spec = tps / n_pos, 1 - fps / n_neg
    if parsed in ("youden", "f1"):
        crit = sens + spec - 1 if parsed == "youden" else 2 * tps / (2 * tps + fps + (n_pos - tps))
        k = int(np.flatnonzero(crit >= crit.max() - _TIE)[-1])
        name = "Youden's J" if parsed == "youden" else "F1"
        return _summary(thresholds[k], parsed, name, crit[k], tps[k], fps[k], n_pos, n_neg)
    kind, target = parsed.split("@")
    x = float(target)
    if kind == "sensitivity":
        # Sensitivity grows as the threshold falls; the lowest score reaches 1, so a solution always exists.
        k = int(np.flatnonzero(sens >= x)[0])
        return _summary(thresholds[k], parsed, "sensitivity", sens[k], tps[k], fps[k], n_pos, n_neg)
    ok = np.flatnonzero(spec >= x)
    if len(ok) == 0:
        if thresholds[0] < 1.0:
            # The next float above a score below 1 is at most 1.0: the threshold stays a probability.
            above = float(np.nextafter(thresholds[0], np.inf))
            return _summary(above, parsed, "specificity", 1.0, 0.0, 0.0, n_pos, n_neg)
        # The highest scores are exactly 1.0 (logits above ~36.7 in float64): no threshold in [0, 1] calls them
        # benign, so the point is 1.0 and says what it achieves rather than leaving [0, 1].
        return _summary(1.0, parsed, "specificity", spec[0], tps[0], fps[0], n_pos, n_neg,
                        note=f"specificity {x} is out of reach: {int(fps[0])} benign image(s) score exactly 1.0, "
                             f"which every threshold in [0, 1] calls malignant")
    k = int(ok[-1])
    return _summary(thresholds[k], parsed, "specificity", spec[k], tps[k], fps[k], n_pos, n_neg)


def _logits(values: Any) -> np.ndarray:
    """(N,) logits, or (N, V) with one column per TTA view; a single view column is flattened."""
    z = np.asarray(values, dtype=np.float64)
    z = z[:, 0] if z.ndim == 2 and z.shape[1] == 1 else (z if z.ndim == 2 else z.ravel())
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    return z


def _nll(labels: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    if z.ndim == 1:
        # -log sigmoid(z) for malignant, -log(1 - sigmoid(z)) for benign, without overflow.
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))
    # Views: log of the mean of sigmoid(z_v) (and of 1 - sigmoid) via logsumexp, stable for large |z|.
    log_p = logsumexp(-np.logaddexp(0.0, -z), axis=1) - math.log(z.shape[1])
    log_q = logsumexp(-np.logaddexp(0.0, z), axis=1) - math.log(z.shape[1])
    return float(-np.mean(labels * log_p + (1 - labels) * log_q))


def fit_temperature(labels: Any, logits: Any) -> float:
    """Temperature T minimising the validation NLL of sigmoid(logit / T), searched over log T in [0.05, 20].

    T > 1 softens over-confident predictions; the ranking (and so AUROC) is unchanged. Warns when T ends on a
    bound (e.g. perfectly separated validation data, where the NLL keeps falling as T -> 0).
    """
    y = np.asarray(labels).ravel()
    z = _logits(logits)
    if len(y) != z.shape[0]:
        raise ValueError(f"labels and logits differ in length: {len(y)} vs {z.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (benign) or 1 (malignant)")
    if len(y) == 0 or y.min() == y.max():
        raise ValueError("temperature scaling needs validation images of both classes")
    if not np.any(z):
        return 1.0  # all logits 0: every temperature gives the same probabilities
    y = y.astype(np.float64)
    lo, hi = math.log(_T_BOUNDS[0]), math.log(_T_BOUNDS[1])
    # Searching log T keeps the bracket symmetric around T = 1 (halving and doubling are equally far).
    res = optimize.minimize_scalar(lambda s: _nll(y, z, math.exp(s)), bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-6})
    temperature = math.exp(float(res.x))
    if min(abs(res.x - lo), abs(res.x - hi)) < 1e-3:
        warnings.warn(f"temperature {temperature:.3g} is at the search bound {_T_BOUNDS}: the validation "
                      "predictions are degenerate (e.g. perfectly separated)", RuntimeWarning, stacklevel=2)
    return temperature


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities sigmoid(logit / T); for (N, V) view logits, the mean over the views."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    probs = expit(_logits(logits) / temperature)
    return probs.mean(axis=1) if probs.ndim == 2 else probs


def view_logit(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """The logit of apply_temperature's probability, computed without forming it: logit / T for one view, and
    log(mean sigmoid(z_v)) - log(mean sigmoid(-z_v)) with z = logit / T for (N, V) views.

    A strictly increasing function of the probability that does not saturate: float64 sigmoid is exactly 1.0 above
    a logit of ~36.7 and coarse well before, so ranking metrics (AUROC, AUPRC) rank these instead and stay the same
    under temperature scaling, which preserves the order of the images."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    z = _logits(logits) / temperature
    if z.ndim == 1:
        return z
    log_p = logsumexp(-np.logaddexp(0.0, -z), axis=1)
    log_q = logsumexp(-np.logaddexp(0.0, z), axis=1)
    return log_p - log_q


def logits_from_probs(probs: Any, eps: float = 1e-7) -> np.ndarray:
    """Logits from stored probabilities (clipped to [eps, 1 - eps], as compute_metrics' log loss does)."""
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def fit_operating_point(labels: Any, logits: Any, method: str | float,
                        calibrate: bool = True) -> tuple[float, OperatingPoint]:
    """(T, operating point) from validation logits, in the documented order: calibrate, then choose the threshold
    on the calibrated probabilities. With calibrate=False, T = 1."""
    temperature = fit_temperature(labels, logits) if calibrate else 1.0
    return temperature, choose_threshold(labels, apply_temperature(logits, temperature), method)


# ---------------------------------------------------------------------------------------------------------------
# predict's and export's threshold=
# ---------------------------------------------------------------------------------------------------------------

def _point_from_metrics(path: Path, value: Any) -> tuple[float, dict[str, Any]]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"threshold={value}: could not read {path} as JSON ({exc}); pass an evaluation's "
                        f"metrics.json, a number, or threshold=auto.") from None
    point = body.get("operating_point") if isinstance(body, dict) else None
    if not isinstance(point, dict) or not isinstance(point.get("threshold"), (int, float)):
        raise UserError(f"{path} has no operating_point with a threshold: it is not an evaluation's metrics.json "
                        f"from this version. Re-run `bcc-eval ckpt=... threshold=youden` and pass its metrics.json, "
                        f"or give the number.")
    temperature = point.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"{path}: operating_point.temperature is {temperature!r}, not a positive number; re-run "
                        f"`bcc-eval ... calibrate=temperature` to write a valid one, or pass a number instead.")
    point = {**point, "source": str(path.resolve())}
    if "tta" not in point and isinstance(body.get("tta"), bool):
        point["tta"] = body["tta"]  # the evaluation's views: the point was chosen on those probabilities
    return float(point["threshold"]), point


def _checkpoint_point(ckpt: Path, checkpoint: dict[str, Any] | None) -> tuple[float, dict[str, Any]]:
    """threshold=auto: the evaluated point the checkpoint itself carries (bcc-eval save_to), never a file beside it."""
    from bcc_lightning.models.checkpoint import deployment_point, how_to_get_a_point, read_checkpoint

    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(ckpt)
    point = deployment_point(checkpoint, ckpt)
    if point is None:
        old = "preprocess" not in (checkpoint.get("hyper_parameters") or {})
        raise UserError(
            f"threshold=auto: {ckpt} carries no evaluated operating point"
            + (" (it was written by an older version of bcc-lightning, which kept the point beside the run; the "
               "model itself still works)" if old else " (checkpoints written by train.py carry none)")
            + ", so there is no threshold to apply, and none is guessed. " + how_to_get_a_point(ckpt) + ".")
    provenance = point.get("provenance") or {}
    where = ", ".join(str(x) for x in (provenance.get("eval_run"), provenance.get("evaluated_at")) if x)
    return float(point["threshold"]), {**point, "source": f"{ckpt}" + (f" (evaluated by bcc-eval: {where})"
                                                                        if where else "")}


def resolve_operating_point(value: Any, ckpt: Path | None = None,
                            checkpoint: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    """(threshold, operating point) for predict, export and serve from `threshold=`:

    - a number in [0, 1]: that threshold (method 'fixed');
    - the path of an evaluation's metrics.json: its operating_point (method, temperature, TTA...) with `source`;
    - `auto`: the operating point the checkpoint carries (`bcc-eval ... save_to=model.ckpt` writes it), with its
      TTA views, temperature and provenance; a checkpoint without one is a UserError saying how to get one.
      Nothing is read from where the file lies. `checkpoint`: its contents, when already read.
    The point's 'temperature' (default 1) goes with the threshold: probabilities are sigmoid(logit / T).
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        if ckpt is None:
            raise UserError("threshold=auto reads the operating point from the checkpoint, and none was given; pass "
                            "a number (e.g. threshold=0.5) or an evaluation's metrics.json.")
        return _checkpoint_point(Path(ckpt).expanduser(), checkpoint)
    number: float | None
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is not None:
        if not (math.isfinite(number) and 0 <= number <= 1):
            raise UserError(f"threshold={value} must lie in [0, 1], be the path of an evaluation's metrics.json, "
                            f"or be auto (the operating point the checkpoint carries).")
        return number, {"threshold": number, "method": "fixed", "chosen_on": None}
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise UserError(f"threshold={value!r} is neither a number in [0, 1] nor an existing file. Pass e.g. "
                        f"threshold=0.5, threshold=auto (the operating point the checkpoint carries, written by "
                        f"`bcc-eval ... save_to=model.ckpt`), or threshold=outputs/eval/<run>/metrics.json from "
                        f"`bcc-eval threshold=youden` to copy the threshold chosen on the validation split.")
    return _point_from_metrics(path, value)
