"""The grouped, stratified split and the folds: pure functions of (sources, ratios, seed)."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from bcc_lightning.data.layout import SPLITS
from bcc_lightning.data.prepare.scan import Source
from bcc_lightning.data.prepare.settings import PrepareSettings


def assign_parts(sources: list[Source], ratios: Sequence[float], seed: int) -> tuple[dict[str, int], list[str]]:
    """Stratified grouped partition: whole groups go to one part; each class fills the parts towards the ratios.

    Groups are placed largest first (ties in seeded random order) into the part furthest below its target.
    Returns ({group: part index}, groups whose images carry both labels).
    """
    rng = random.Random(seed)
    groups: dict[str, list[Source]] = defaultdict(list)
    for s in sources:
        groups[s.group].append(s)
    mixed = [g for g, members in groups.items() if len({m.label for m in members}) > 1]
    by_class: dict[int, list[str]] = defaultdict(list)
    for name, members in groups.items():
        majority = Counter(m.label for m in members).most_common(1)[0][0]
        by_class[majority].append(name)
    parts: dict[str, int] = {}
    n = len(ratios)
    for offset, (_label, names) in enumerate(sorted(by_class.items())):
        names.sort()
        rng.shuffle(names)
        names.sort(key=lambda g: -len(groups[g]))  # stable: equal sizes keep the shuffled order
        total = sum(len(groups[g]) for g in names)
        targets = [r * total for r in ratios]
        filled = [0.0] * n
        for name in names:
            # The part with the largest missing share of its target gets the group; empty targets get nothing.
            # Ties go to a different part for each class, so that the classes' remainders do not pile up together.
            deficits = [(targets[i] - filled[i]) / targets[i] if targets[i] > 0 else -math.inf for i in range(n)]
            index = max(range(n), key=lambda i: (deficits[i], -((i - offset) % n)))
            filled[index] += len(groups[name])
            parts[name] = index
    return parts, mixed


def split_groups(sources: list[Source], settings: PrepareSettings) -> dict[str, Any]:
    """Set `split` (and `fold`) on every source: train/val/test, or K folds with an optional held-out test."""
    if not settings.folds:
        parts, mixed = assign_parts(sources, settings.ratios, settings.seed)
        for s in sources:
            s.split = SPLITS[parts[s.group]]
        return {"mixed_label_groups": mixed}
    rest = sources
    mixed: list[str] = []
    if settings.holdout_test:
        test_ratio = settings.ratios[2]
        parts, mixed = assign_parts(sources, (1 - test_ratio, test_ratio), settings.seed)
        for s in sources:
            s.split = "test" if parts[s.group] == 1 else "train"
        rest = [s for s in sources if s.split == "train"]
    folds, mixed_rest = assign_parts(rest, [1 / settings.folds] * settings.folds, settings.seed + 1)
    for s in rest:
        s.split, s.fold = "train", folds[s.group]
    return {"mixed_label_groups": sorted(set(mixed) | set(mixed_rest))}
