"""The few-shot curve's groups: manifest.csv's group column (augmented copies uncounted), else one group per image."""

from __future__ import annotations

import csv
from pathlib import Path

from bcc_lightning.data.layout import MANIFEST, MANIFEST_COLUMNS
from bcc_lightning.training.probe import training_groups


def _manifest(root: Path, rows: list[dict[str, str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with (root / MANIFEST).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in MANIFEST_COLUMNS})


def test_groups_from_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "prepared"
    _manifest(root, [{"path": "train/B/a.png", "group": "P1", "augmentation": "none"},
                     {"path": "train/B/a_rot.png", "group": "P1", "augmentation": "rot90"},
                     {"path": "train/M/b.png", "group": "P2", "augmentation": "none"},
                     {"path": "train/M/c.png", "group": "", "augmentation": "none"}])
    paths = [root / p for p in ("train/B/a.png", "train/B/a_rot.png", "train/M/b.png", "train/M/c.png")]
    groups, counted, source = training_groups(root, paths)
    assert groups[0] == groups[1] == "group:P1" and groups[2] == "group:P2" and groups[3] == "image:train/M/c.png"
    assert counted.tolist() == [True, False, True, True]
    assert "1 of 4 images without one" in source


def test_plain_folders_make_each_image_its_own_group(tmp_path: Path) -> None:
    paths = [tmp_path / "train" / "B" / f"{i}.png" for i in range(3)]
    groups, counted, source = training_groups(tmp_path, paths)
    assert len(set(groups)) == 3 and counted.all() and "each image is its own group" in source
