"""Linear probes on frozen embeddings: L2-regularised logistic regression fitted with L-BFGS on standardised
features (folded back into one nn.Linear), and a cosine k-nearest-neighbour classifier. Both pick their setting
(C, k) on the validation split."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from bcc_lightning.utils.errors import UserError


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank AUROC (ties averaged); NaN with one class."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    i = 0
    while i < len(sorted_scores):  # average ranks over ties
        j = i
        while j + 1 < len(sorted_scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    probs = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(probs) + (1 - labels) * np.log(1 - probs)))


@dataclass
class LogisticProbe:
    """A fitted probe as a linear map on *raw* embeddings: logit = features @ weight + bias."""

    weight: np.ndarray  # (D,)
    bias: float
    C: float
    val: dict[str, float]
    grid: list[dict[str, float]] = field(default_factory=list)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ self.weight.astype(np.float64) + self.bias

    def into(self, linear: nn.Linear) -> None:
        """Copy the probe into a model's head (one output)."""
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(self.weight, dtype=linear.weight.dtype).view(1, -1))
            linear.bias.fill_(float(self.bias))


def _fit_one(x: torch.Tensor, y: torch.Tensor, C: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """min mean BCE + |w|^2 / (2 C n) (scikit-learn's C, per sample) with L-BFGS, in float64."""
    n, dim = x.shape
    w = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + (w @ w) / (2 * C * n)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def fit_logistic(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 Cs: list[float], select: str = "auroc", max_iter: int = 200) -> LogisticProbe:
    """Fit one probe per C on standardised train features; keep the best on val (AUROC, ties by log-loss; or
    log-loss alone with select='loss'). The standardisation is folded into the returned weight and bias."""
    if len(set(np.asarray(train_y).tolist())) < 2:
        raise UserError("The linear probe needs both classes in the training split; check the data root.")
    if not Cs or any(float(c) <= 0 for c in Cs):
        raise UserError(f"probe.Cs must be a list of positive numbers (inverse regularisation strengths), got {Cs}.")
    if select not in ("auroc", "loss"):
        raise UserError(f"probe.select must be auroc or loss (got {select!r}): how C and k are chosen on val.")
    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-6, std, 1.0)  # constant features (dead units) stay as they are
    x = torch.as_tensor((train_x - mean) / std, dtype=torch.float64)
    y = torch.as_tensor(train_y, dtype=torch.float64)
    xv = torch.as_tensor((val_x - mean) / std, dtype=torch.float64)
    best: tuple[tuple[float, float], float, np.ndarray, float, dict[str, float]] | None = None
    grid = []
    for C in (float(c) for c in Cs):
        w, b = _fit_one(x, y, C, max_iter)
        probs = torch.sigmoid(xv @ w + b).numpy()
        auroc, loss = _auroc(val_y, probs), _log_loss(val_y, probs)
        grid.append({"C": C, "val_auroc": auroc, "val_loss": loss})
        score = (-loss, 0.0) if select == "loss" else ((auroc if math.isfinite(auroc) else -1.0), -loss)
        if best is None or score > best[0]:
            best = (score, C, w.numpy() / std, float(b) - float((w.numpy() / std) @ mean),
                    {"auroc": auroc, "loss": loss})
    assert best is not None
    _, C, weight, bias, val = best
    val["acc"] = float(np.mean(((val_x @ weight + bias) >= 0) == (np.asarray(val_y) == 1)))
    return LogisticProbe(weight=weight.astype(np.float32), bias=bias, C=C, val=val, grid=grid)


def _unit(x: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_probs(train_x: np.ndarray, train_y: np.ndarray, query: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """p(malignant) = the malignant share of the k most cosine-similar training images."""
    bank, labels = _unit(train_x), torch.as_tensor(train_y, dtype=torch.float32)
    k = min(int(k), len(labels))
    out = []
    for start in range(0, len(query), chunk):
        sims = _unit(query[start:start + chunk]) @ bank.T
        out.append(labels[sims.topk(k, dim=1).indices].mean(dim=1))
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def fit_knn(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, ks: list[int],
            select: str = "auroc") -> tuple[int, list[dict[str, float]]]:
    """The k with the best val AUROC (ties: the smaller val log-loss, then the smaller k)."""
    if not ks or any(int(k) < 1 for k in ks):
        raise UserError(f"probe.knn_k must be a list of whole numbers >= 1, got {ks}.")
    grid, best = [], None
    for k in sorted({int(k) for k in ks}):
        probs = knn_probs(train_x, train_y, val_x, k)
        auroc, loss = _auroc(val_y, probs), _log_loss(val_y, probs)
        grid.append({"k": k, "val_auroc": auroc, "val_loss": loss})
        score = (-loss,) if select == "loss" else ((auroc if math.isfinite(auroc) else -1.0), -loss)
        if best is None or score > best[0]:
            best = (score, k)
    assert best is not None
    return best[1], grid


def probe_summary(probe: LogisticProbe) -> dict[str, Any]:
    return {"head": "logistic", "C": probe.C, "val_auroc": probe.val["auroc"], "val_loss": probe.val["loss"],
            "val_acc": probe.val["acc"], "grid": probe.grid,
            "fit": "L-BFGS, L2 (scikit-learn's C), standardised features folded into the head"}
