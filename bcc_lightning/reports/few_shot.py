"""Few-shot curves of a linear probe: test accuracy and AUROC against the number of labelled training images per
class, with groups (patients) drawn whole and several repeats. Pure functions over embedding arrays; the probe task
(`tasks/probe.py`) calls them with the cached embeddings.

The draw, for one repeat r and one size n:
1. The training split's groups are shuffled once per repeat, by `numpy.random.default_rng([seed, r])`; every n of
   that repeat uses the same order, so the draws of one repeat are nested (a larger n adds groups, never swaps them).
2. For each class c separately: walk that order, keep the groups that hold any image of class c, and take them
   until the class-c images taken reach n. Only labelled originals count (augmented copies come with their group
   but are not counted); a group is never split.
3. The draw is the union of both classes' groups. A group holding both classes (a patient with benign and malignant
   images) is drawn whole and all its images are used, so a class can get more than n images when the other class's
   walk brings in such a group. The counts actually used are reported.
4. When a class has fewer than n images in the training split, all of them are used and the row is marked `capped`.

Each draw fits the same L2 logistic regression as the main probe, with C chosen again on the whole val split
(the best C depends on n: small draws want stronger regularisation), and is scored on the whole test split:
accuracy at probability 0.5 and AUROC (`reports.metrics.auroc`, tested against scikit-learn).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.models.probe import fit_logistic
from bcc_lightning.reports.metrics import auroc
from bcc_lightning.utils.atomic_io import write_text
from bcc_lightning.utils.errors import UserError

CSV_COLUMNS = ("n_per_class", "repeat", "images_used", "images_benign", "images_malignant", "groups_used", "capped",
               "C", "accuracy", "auroc")


def check_sizes(sizes: Any, repeats: Any) -> tuple[list[int], int]:
    """probe.few_shot (whole numbers >= 1; null or [] turns the curve off) and probe.few_shot_repeats (>= 1)."""
    values = [] if sizes in (None, "", "none", "null", "off") else sizes
    try:
        ns = sorted({int(v) for v in values})
        ok = all(not isinstance(v, bool) and float(v) == int(v) for v in values) and all(n >= 1 for n in ns)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"probe.few_shot must be a list of whole numbers >= 1, the labelled training images per class "
                        f"of each point of the few-shot curve (e.g. probe.few_shot=[1,2,5,10,20,50]), or null to "
                        f"skip the curve; got {sizes!r}.")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, str)) or not str(repeats).isdigit() \
            or int(repeats) < 1:
        raise UserError(f"probe.few_shot_repeats must be a whole number >= 1 (how many random draws of patients "
                        f"per point of the few-shot curve); got {repeats!r}.")
    return ns, int(repeats)


@dataclass(frozen=True)
class Draw:
    """One draw: the training rows used (sorted), how many groups, images per class, and capped classes."""

    indices: np.ndarray
    groups: int
    per_class: tuple[int, int]
    capped: tuple[bool, bool]


def group_order(groups: Sequence[str], seed: int, repeat: int) -> list[str]:
    """The distinct groups in a seeded random order (one order per repeat, shared by every n)."""
    distinct = sorted(set(groups))  # sorted first: the order does not depend on the order of the rows
    permutation = np.random.default_rng([int(seed), int(repeat)]).permutation(len(distinct))
    return [distinct[i] for i in permutation]


def draw_groups(labels: np.ndarray, groups: Sequence[str], n: int, order: Sequence[str],
                counted: np.ndarray | None = None) -> Draw:
    """Whole groups until each class has at least `n` counted images (the rule in the module docstring).

    `counted`: which rows are labelled originals (True) rather than augmented copies; all rows count by default.
    """
    labels = np.asarray(labels)
    counted = np.ones(len(labels), dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    chosen: set[str] = set()
    capped = []
    for label in (0, 1):
        count = 0
        for group in order:
            if count >= n:
                break
            k = int(sum(1 for i in members.get(group, ()) if labels[i] == label and counted[i]))
            if k:
                chosen.add(group)
                count += k
        capped.append(count < n)
    indices = np.array(sorted(i for g in chosen for i in members[g]), dtype=np.int64)
    per_class = tuple(int(np.sum((labels[indices] == c) & counted[indices])) for c in (0, 1))
    return Draw(indices=indices, groups=len(chosen), per_class=per_class, capped=(capped[0], capped[1]))


def few_shot_curve(train: tuple[np.ndarray, np.ndarray], groups: Sequence[str], val: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], sizes: Sequence[int], repeats: int, seed: int,
                   Cs: Sequence[float], select: str = "auroc", max_iter: int = 200,
                   counted: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per (n, repeat), in the order of CSV_COLUMNS. `train`, `val`, `test`: (features, labels) arrays."""
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = train, val, test
    if len(groups) != len(train_y):
        raise ValueError(f"{len(groups)} groups for {len(train_y)} training images")
    test_y = np.asarray(test_y)
    fitted: dict[bytes, tuple[float, float, float]] = {}  # identical draws (capped sizes) are fitted once
    rows = []
    for repeat in range(int(repeats)):
        order = group_order(groups, seed, repeat)
        for n in sorted({int(s) for s in sizes}):
            draw = draw_groups(train_y, groups, n, order, counted)
            key = draw.indices.tobytes()
            if key not in fitted:
                probe = fit_logistic(train_x[draw.indices], train_y[draw.indices], val_x, val_y, list(Cs), select,
                                     max_iter)
                probs = 1.0 / (1.0 + np.exp(-probe.logits(test_x)))
                accuracy = float(np.mean((probs >= 0.5) == (test_y == 1)))
                area = auroc(test_y, probs)
                fitted[key] = (probe.C, accuracy, math.nan if area is None else area)
            C, accuracy, area = fitted[key]
            rows.append({"n_per_class": n, "repeat": repeat, "images_used": int(len(draw.indices)),
                         "images_benign": draw.per_class[0], "images_malignant": draw.per_class[1],
                         "groups_used": draw.groups, "capped": any(draw.capped), "C": C, "accuracy": accuracy,
                         "auroc": area})
    return rows


def _spread(values: list[float]) -> dict[str, float]:
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan}
    return {"mean": float(finite.mean()), "sd": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
            "min": float(finite.min()), "max": float(finite.max())}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per n: the number of repeats and distinct draws, mean images and groups, and accuracy/AUROC as mean, sample
    SD, min and max over the repeats."""
    out = []
    for n in sorted({r["n_per_class"] for r in rows}):
        chosen = [r for r in rows if r["n_per_class"] == n]
        out.append({"n_per_class": n, "repeats": len(chosen),
                    "distinct_draws": len({(r["images_used"], r["groups_used"], r["accuracy"], r["auroc"])
                                           for r in chosen}),
                    "images_used_mean": float(np.mean([r["images_used"] for r in chosen])),
                    "groups_used_mean": float(np.mean([r["groups_used"] for r in chosen])),
                    "capped": any(r["capped"] for r in chosen),
                    "accuracy": _spread([r["accuracy"] for r in chosen]),
                    "auroc": _spread([r["auroc"] for r in chosen])})
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in CSV_COLUMNS})
    return write_text(path, buffer.getvalue())


def write_figure(summary: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Accuracy and AUROC against images per class (log x), mean with min-max bars; capped points hollow."""
    from bcc_lightning.reports.plots import plt, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), constrained_layout=True)
    x = np.array([s["n_per_class"] for s in summary], dtype=float)
    for ax, metric, name in ((axes[0], "accuracy", "test accuracy (p >= 0.5)"), (axes[1], "auroc", "test AUROC")):
        mean = np.array([s[metric]["mean"] for s in summary])
        low = mean - np.array([s[metric]["min"] for s in summary])
        high = np.array([s[metric]["max"] for s in summary]) - mean
        ax.errorbar(x, mean, yerr=[low, high], fmt="-o", capsize=3, color="tab:blue", label="mean, min-max bars")
        capped = np.array([s["capped"] for s in summary], dtype=bool)
        if capped.any():
            ax.plot(x[capped], mean[capped], "o", mfc="white", color="tab:blue", label="capped: all training images")
        ax.set_xscale("log")
        ax.set_xticks(x, [str(int(v)) for v in x])
        ax.minorticks_off()
        ax.set_xlabel(f"labelled training images per class ({CLASS_NAMES[0]}, {CLASS_NAMES[1]})")
        ax.set_ylabel(name)
        ax.set_ylim(min(0.4, float(np.nanmin(mean - low)) - 0.02) if len(mean) else 0.4, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title or f"Few-shot linear probe ({summary[0]['repeats'] if summary else 0} repeats, "
                          f"patients drawn whole)")
    return save_figure(fig, path)


def _cell(spread: dict[str, float]) -> str:
    if not math.isfinite(spread["mean"]):
        return "n/a"
    return f"{spread['mean']:.3f} [{spread['min']:.3f}–{spread['max']:.3f}]"


def markdown(summary: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """The report.md section: how the draws were made and one row per n."""
    lines = ["## Few-shot curve (linear probe)", "",
             f"Test accuracy (p >= 0.5) and AUROC of the logistic probe fitted on n labelled training images per "
             f"class, {settings['repeats']} random draws each (seed {settings['seed']}): {settings['groups']}; groups "
             f"drawn whole until each class has n images, C chosen on the whole val split for each draw. Cells: mean "
             f"[min–max] over the draws.", "",
             "| n per class | images used (mean) | groups (mean) | accuracy | AUROC |", "|---|---|---|---|---|"]
    for s in summary:
        mark = " (capped: all)" if s["capped"] else ""
        lines.append(f"| {s['n_per_class']}{mark} | {s['images_used_mean']:.1f} | {s['groups_used_mean']:.1f} | "
                     f"{_cell(s['accuracy'])} | {_cell(s['auroc'])} |")
    lines += ["", "![few_shot.png](few_shot.png)", "", "Every draw: `few_shot.csv`.", ""]
    return lines
