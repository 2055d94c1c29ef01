"""bcc-prepare's settings, checked before any file is read."""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bcc_lightning.data.augment import AugmentConfig, KerasAugment
from bcc_lightning.utils.errors import UserError

# The original project's ops, then the geometric warps of Keras notebooks (data/augment.py holds them all).
AUGMENT_OPS = ("rot90", "rotate", "hflip", "vflip", "grayscale", "shift", "zoom", "shear", "crop", "keras")
WARPS = ("shift", "zoom", "shear", "crop", "keras")
BREAKHIS_PATTERN = r"^SOB_[BM]_[A-Za-z]+-(\d+-[A-Za-z0-9]+)-\d+-\d+"
FORMATS = ("keep", "png", "jpg")
GROUPINGS = ("auto", "image", "breakhis", "pattern", "content")


@dataclass(frozen=True)
class PrepareSettings:
    raw: str
    out: str
    ratios: tuple[float, float, float] = (0.70, 0.15, 0.15)
    seed: int = 42
    # auto: patients or slides from a manifest, known name schemes or folders (data/groups.py); image only when
    # nothing suggests more, and then said so.
    group: str = "auto"
    group_pattern: str | None = None
    augment_ops: tuple[str, ...] = ("rot90", "hflip", "vflip")
    augment_copies: int = 0
    augment_before_split: bool = False
    augment_max_degrees: float = 30.0
    # The geometric ops' ranges (conf/prepare.yaml explains each); used only for the ops named in augment_ops.
    augment_fill_mode: str = "nearest"
    augment_shift: float = 0.25
    augment_zoom: tuple[float, float] = (0.5, 2.0)
    augment_anisotropic_zoom: bool = False
    augment_shear: float = 20.0
    augment_crop_area: tuple[float, float] = (0.25, 0.8)
    augment_keras: KerasAugment = KerasAugment()
    resize: int | None = None
    format: str = "keep"
    jpg_quality: int = 95
    workers: int = 1
    overwrite: bool = False
    # K-fold cross-validation: 0 = a plain train/val/test split. With K >= 2, every image not held out for test is
    # assigned to one of K folds (whole groups, stratified); train.py data.fold=k then validates on fold k.
    folds: int = 0
    holdout_test: bool = True
    # Near-duplicate copies of one source (rotated, flipped, grayscale, resized; shifted, zoomed, cropped, sheared) and
    # overlapping views sharing at least min_overlap of either image are merged into one group, so they never land in
    # two splits or folds: the audit's own detector and threshold (keep min_overlap <= the audit's). group=content
    # uses only this relation (each image is otherwise its own group).
    dedup_near: bool = True
    min_overlap: float = 0.5

    def min_groups(self) -> int:
        """Groups a class needs so that every part of the split (or every fold) can hold one."""
        if self.folds:
            return self.folds + (1 if self.holdout_test and self.ratios[2] > 0 else 0)
        return sum(1 for r in self.ratios if r > 0)

    def validate(self) -> None:
        if len(self.ratios) != 3 or any(r < 0 for r in self.ratios) or not math.isclose(sum(self.ratios), 1.0,
                                                                                          abs_tol=1e-6):
            raise UserError(f"ratios must be three non-negative numbers (train, val, test) that sum to 1; got "
                            f"{list(self.ratios)}.")
        if self.ratios[0] == 0:
            raise UserError("The training ratio must be above 0.")
        if self.group not in GROUPINGS:
            raise UserError(f"group must be auto (patients from a manifest, names or folders), image, breakhis, "
                            f"pattern (with group_pattern=REGEX) or content; got {self.group!r}.")
        if not 0.0 < self.min_overlap <= 1.0:
            raise UserError(f"min_overlap must be in (0, 1] (got {self.min_overlap}): the share of either image's area "
                            f"two views must show in common to be merged into one group (0.5: half).")
        if self.group == "content" and not self.dedup_near:
            raise UserError("group=content groups images by their near-duplicate copies, so it needs dedup_near=true; "
                            "drop dedup_near=false, or use group=image.")
        if self.group == "pattern":
            if not self.group_pattern:
                raise UserError("group=pattern needs group_pattern=REGEX whose first capture group is the group id.")
            try:
                compiled = re.compile(self.group_pattern)
            except re.error as exc:
                raise UserError(f"group_pattern {self.group_pattern!r} is not a valid regular expression: {exc}.") \
                    from exc
            if compiled.groups < 1:
                raise UserError(f"group_pattern {self.group_pattern!r} needs a capture group, e.g. '^(P\\d+)_'.")
        unknown = [op for op in self.augment_ops if op not in AUGMENT_OPS]
        if unknown:
            raise UserError(f"Unknown augment.ops {unknown}; choose from {list(AUGMENT_OPS)}.")
        if self.augment_copies < 0:
            raise UserError("augment.copies must be 0 or more.")
        if self.augment_copies and not self.augment_ops:
            raise UserError("augment.copies > 0 needs at least one op in augment.ops.")
        try:
            for warp in WARPS:
                self.augment_config((warp,))
        except ValueError as exc:  # the message starts with the key's name
            raise UserError(f"augment.{exc}") from exc
        if self.format not in FORMATS:
            raise UserError(f"format must be one of {list(FORMATS)}; got {self.format!r}.")
        if self.resize is not None and self.resize < 8:
            raise UserError(f"resize (the longest side in pixels) must be at least 8; got {self.resize}.")
        if self.folds == 1 or self.folds < 0:
            raise UserError(f"folds must be 0 (no cross-validation) or at least 2; got {self.folds}.")
        if self.folds and self.augment_before_split:
            raise UserError("folds and augment.before_split=true do not go together: copies would cross folds.")
        if not 1 <= self.jpg_quality <= 100:
            raise UserError(f"jpg_quality must be 1..100; got {self.jpg_quality}.")

    def augment_config(self, ops: Sequence[str], seed: int = 0) -> AugmentConfig:
        """The one augmentation's config for a copy drawn with `ops`: rot90/rotate as chosen, flips and grayscale at
        even odds, and one of the chosen warps (drawn with `seed`) with its range (ValueError on a bad range).

        One warp per copy, not all of them composed: each stays within what the copy detector is measured to find
        (data/duplicates.py), so group=content can still re-split a folder augmented before splitting; Keras'
        usual composition is the keras op.
        """
        warps = [op for op in ops if op in WARPS]
        warp = random.Random(seed).choice(warps) if warps else None
        return AugmentConfig(
            rot90="rot90" in ops, rotation_degrees=self.augment_max_degrees if "rotate" in ops else 0.0,
            hflip=0.5 if "hflip" in ops else 0.0, vflip=0.5 if "vflip" in ops else 0.0,
            grayscale=0.5 if "grayscale" in ops else 0.0,
            shift=self.augment_shift if warp == "shift" else 0.0, zoom=self.augment_zoom if warp == "zoom" else None,
            anisotropic_zoom=self.augment_anisotropic_zoom, shear=self.augment_shear if warp == "shear" else 0.0,
            crop_area=self.augment_crop_area if warp == "crop" else None,
            keras=self.augment_keras if warp == "keras" else None, fill_mode=self.augment_fill_mode)

    @classmethod
    def from_config(cls, cfg: Any) -> PrepareSettings:
        """From conf/prepare.yaml's keys (`workers=auto`: every core)."""
        workers = (os.cpu_count() or 1) if cfg.num_workers == "auto" else int(cfg.num_workers)
        return cls(
            raw=str(cfg.raw), out=str(cfg.out), ratios=tuple(float(r) for r in cfg.ratios), seed=int(cfg.seed),
            group=str(cfg.get("group", "auto")), group_pattern=cfg.group_pattern, augment_ops=tuple(cfg.augment.ops),
            augment_copies=int(cfg.augment.copies), augment_before_split=bool(cfg.augment.before_split),
            augment_max_degrees=float(cfg.augment.max_degrees), **_geometry_from_config(cfg.augment),
            resize=None if cfg.resize is None else int(cfg.resize), format=str(cfg.format),
            jpg_quality=int(cfg.jpg_quality), workers=workers, overwrite=bool(cfg.overwrite), folds=int(cfg.folds),
            holdout_test=bool(cfg.holdout_test), dedup_near=bool(cfg.get("dedup_near", True)),
            min_overlap=float(cfg.get("min_overlap", 0.5)),
        )


def _geometry_from_config(augment: Any) -> dict[str, Any]:
    """The geometric ops' keys of conf/prepare.yaml's augment block; absent ones keep their defaults."""
    found: dict[str, Any] = {}
    for key in ("fill_mode", "shift", "zoom", "anisotropic_zoom", "shear", "crop_area"):
        if augment.get(key) is not None:
            value = augment.get(key)
            found[f"augment_{key}"] = tuple(float(v) for v in value) if key in ("zoom", "crop_area") else value
    if augment.get("keras") is not None:
        known = set(KerasAugment.__dataclass_fields__)
        unknown = sorted(set(augment.keras) - known)
        if unknown:
            raise UserError(f"Unknown augment.keras keys {unknown}; choose from {sorted(known)}.")
        found["augment_keras"] = KerasAugment(**{k: augment.keras[k] for k in augment.keras})
    return found
