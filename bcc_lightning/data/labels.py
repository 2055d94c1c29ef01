"""The only place that knows class names: B/M and benign/malignant folders <-> 0/1."""

from __future__ import annotations

BENIGN, MALIGNANT = 0, 1
CLASS_NAMES: tuple[str, str] = ("benign", "malignant")
SHORT_NAMES: tuple[str, str] = ("B", "M")

_ALIASES = {"b": BENIGN, "benign": BENIGN, "m": MALIGNANT, "malignant": MALIGNANT}
ACCEPTED_FOLDER_NAMES = "B/M or benign/malignant (any letter case)"


def label_from_folder(name: str) -> int | None:
    """Label of a class folder name, or None if the name is not a class name."""
    return _ALIASES.get(name.strip().lower())
