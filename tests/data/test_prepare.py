"""bcc-prepare on generated raw folders: grouping, stratification, augmentation, bad files, safety."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from bcc_lightning.data.prepare import PrepareSettings, prepare
from bcc_lightning.utils.errors import UserError
from tests.conftest import (
    REPO,
    breakhis_tree,
    flat_tree,
    read_manifest,
    run_prepare,
    tiny_train_config,
    tree_digest,
    write_image,
)


def test_breakhis_groups_never_cross_splits(tmp_path: Path) -> None:
    raw = breakhis_tree(tmp_path / "raw")
    summary = run_prepare(raw, tmp_path / "out", group="breakhis", augment_copies=2)
    rows = read_manifest(tmp_path / "out")
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["group"]].add(row["split"])
        assert (tmp_path / "out" / row["path"]).is_file()
        assert row["path"].startswith(f"{row['split']}/{'B' if row['label'] == 'benign' else 'M'}/")
    assert len(splits_of) == 12 and all(len(s) == 1 for s in splits_of.values())
    assert summary["groups_crossing_splits"] == 0
    assert sum(summary["groups"].values()) == 12 and all(summary["groups"][s] >= 2 for s in summary["groups"])
    assert "14-0001F" in splits_of  # the patient id parsed from SOB_B_A-14-0001F-40-000.png


def _splits_per_group(out: Path) -> dict[str, set[str]]:
    splits_of = defaultdict(set)
    for row in read_manifest(out):
        splits_of[row["group"]].add(row["split"])
    return splits_of


def test_defaults_keep_each_breakhis_patient_in_one_split(tmp_path: Path) -> None:
    """Done-when (issue 25): BreakHis-named images split with the defaults keep each patient in one split; the same
    images renamed anonymously into per-patient folders inside B/ and M/ are grouped by folder."""
    from bcc_lightning.data.prepare import format_table

    raw = breakhis_tree(tmp_path / "raw", patients=6, per_patient=4)
    summary = run_prepare(raw, tmp_path / "out")
    splits_of = _splits_per_group(tmp_path / "out")
    assert summary["grouping"]["rule"] == "breakhis" and summary["grouping"]["unit"] == "patient"
    assert len(splits_of) == 12 and all(len(s) == 1 for s in splits_of.values()) and "14-0001F" in splits_of
    assert "groups: grouped by patient (inferred from BreakHis names): 12 groups" in format_table(summary)
    assert "leakage-free" not in summary["protocol"]

    anonymous = tmp_path / "anonymous"
    patient_of: dict[str, str] = {}
    cases: dict[str, str] = {}
    for k, source in enumerate(sorted(raw.rglob("*.png"))):
        cls = "B" if "benign" in source.parts else "M"
        patient = source.name.split("-")[2]  # SOB_B_A-14-0001F-40-000.png -> 0001F; the new names say nothing
        case = cases.setdefault(patient, f"case{len(cases) * 7919 % 1000:03d}")
        target = anonymous / cls / case / f"{k:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        patient_of[target.relative_to(anonymous).as_posix()] = patient
    summary = run_prepare(anonymous, tmp_path / "out_anonymous", dedup_near=False)  # the copy index: tested above
    assert summary["grouping"]["rule"] == "folder" and summary["grouping"]["groups"] == 12
    split_of_patient = defaultdict(set)
    for row in read_manifest(tmp_path / "out_anonymous"):
        split_of_patient[patient_of[row["source"]]].add(row["split"])
    assert len(split_of_patient) == 12 and all(len(s) == 1 for s in split_of_patient.values())

    # A prepared folder prepared again: its manifest's patients are used as they are.
    again = run_prepare(tmp_path / "out", tmp_path / "again", seed=7, dedup_near=False)
    assert again["grouping"]["rule"] == "manifest" and again["grouping"]["unit"] == "patient"
    assert again["grouping"]["groups"] == 12 and all(len(s) == 1 for s in _splits_per_group(tmp_path / "again")
                                                     .values())


def test_tcga_names_group_by_patient(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for label, cls in enumerate("BM"):
        for patient in range(5):
            barcode = f"TCGA-A{label}-{patient:04d}"
            for slide in (1, 2):
                write_image(raw / cls / f"{barcode}-01Z-00-DX{slide}_x{slide * 512}_y0.png", size=(24, 18),
                            seed=label * 100 + patient * 10 + slide)
    summary = run_prepare(raw, tmp_path / "out")
    assert summary["grouping"]["rule"] == "tcga" and summary["grouping"]["groups"] == 10
    splits_of = _splits_per_group(tmp_path / "out")
    assert "TCGA-A0-0003" in splits_of and all(len(s) == 1 for s in splits_of.values())


def test_group_pattern(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for label, cls in enumerate("BM"):
        for patient in range(5):
            for i in range(3):
                write_image(raw / cls / f"P{label}{patient}_slide_{i}.png", seed=label * 100 + patient * 10 + i)
    write_image(raw / "B" / "unmatched.png", seed=999)
    run_prepare(raw, tmp_path / "out", group="pattern", group_pattern=r"^(P\d+)_")
    rows = read_manifest(tmp_path / "out")
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["group"]].add(row["split"])
    assert len(splits_of) == 10 and all(len(s) == 1 for s in splits_of.values())
    rejected = (tmp_path / "out" / "rejected.csv").read_text()
    assert "unmatched.png" in rejected and "group pattern" in rejected
    # No name matches: nothing is written, so the error itself shows names to check the pattern against.
    with pytest.raises(UserError, match=r"for example: .*\.png.*group=auto"):
        run_prepare(raw, tmp_path / "none", group="breakhis")
    assert not (tmp_path / "none").exists()


def test_stratified_ratios_and_determinism(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=40)
    summary = run_prepare(raw, tmp_path / "a", seed=3)
    assert summary["counts"] == {"train": {"B": 28, "M": 28}, "val": {"B": 6, "M": 6}, "test": {"B": 6, "M": 6}}
    run_prepare(raw, tmp_path / "b", seed=3)
    run_prepare(raw, tmp_path / "c", seed=4)
    a, b, c = (sorted((r["source"], r["split"]) for r in read_manifest(tmp_path / x)) for x in "abc")
    assert a == b and a != c


def test_augmented_copies_stay_in_train(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw")
    summary = run_prepare(raw, tmp_path / "out", augment_copies=3, augment_ops=("rot90", "hflip", "rotate",
                                                                                  "grayscale"))
    rows = read_manifest(tmp_path / "out")
    augmented = [r for r in rows if r["augmentation"] != "none"]
    assert augmented and all(r["split"] == "train" for r in augmented)
    split_of_source = {r["source"]: r["split"] for r in rows if r["augmentation"] == "none"}
    assert all(split_of_source[r["source"]] == "train" for r in augmented)
    assert len(augmented) == 3 * sum(1 for s in split_of_source.values() if s == "train")
    # A flat folder says nothing about patients: the protocol says so instead of claiming "leakage-free".
    assert summary["grouping"]["rule"] == "image" and "leakage-free" not in summary["protocol"]
    assert "if several images come from one patient, this split leaks" in summary["protocol"]
    sample = next(r for r in augmented if r["augmentation"].startswith("rot90"))
    assert Image.open(tmp_path / "out" / sample["path"]).size == (20, 30)  # rotated by 90: sides swapped


def test_before_split_crosses_and_warns(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw")
    messages: list[str] = []
    summary = prepare(PrepareSettings(raw=str(raw), out=str(tmp_path / "out"), augment_copies=4,
                                      augment_before_split=True), log=messages.append)
    assert any("CONTAMINATED" in m for m in messages)
    assert summary["protocol"].startswith("CONTAMINATED") and summary["settings"]["augment_before_split"]
    splits_of = defaultdict(set)
    for row in read_manifest(tmp_path / "out"):
        splits_of[row["source"]].add(row["split"])
    assert any(len(s) > 1 for s in splits_of.values())


def test_bad_files_are_rejected_with_reasons(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=10)
    (raw / "B" / "empty.png").write_bytes(b"")
    (raw / "B" / "text.jpg").write_text("this is not a jpeg")
    good = (raw / "B" / "B_000.jpg").read_bytes()
    (raw / "M" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (raw / "B" / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 50)
    (raw / "B" / "copy.jpg").write_bytes(good)  # duplicate within B
    (raw / "M" / "conflict.jpg").write_bytes((raw / "B" / "B_001.jpg").read_bytes())  # same content in M
    (raw / "scan.svs").write_text("x")  # an unknown extension is still rejected by name
    write_image(raw / "B" / "odd_modes" / "cmyk.jpg", mode="CMYK", fmt="JPEG", seed=7)
    write_image(raw / "M" / "odd_modes" / "sixteen.tif", mode="I;16", fmt="TIFF", seed=8)
    write_image(raw / "M" / "odd_modes" / "rgba.png", mode="RGBA", seed=9)
    write_image(raw / "B" / "odd_modes" / "palette.png", mode="P", seed=10)
    summary = run_prepare(raw, tmp_path / "out")
    reasons = dict(csv.reader((tmp_path / "out" / "rejected.csv").open()))
    assert "empty" in reasons["B/empty.png"]
    assert "cannot decode" in reasons["B/text.jpg"]
    assert "cannot decode" in reasons["M/truncated.jpg"]
    assert "cannot decode" in reasons["B/bad.tif"]
    assert "duplicate of B/B_000.jpg" in reasons["B/copy.jpg"]
    assert "conflict" in reasons["M/conflict.jpg"] and "conflict" in reasons["B/B_001.jpg"]
    assert "not an image" in reasons["scan.svs"]
    assert summary["duplicates"] == 1 and summary["conflicts"] == 2 and summary["rejected"] == len(reasons) - 1
    used = {r["source"] for r in read_manifest(tmp_path / "out")}
    assert {"B/odd_modes/cmyk.jpg", "M/odd_modes/sixteen.tif", "M/odd_modes/rgba.png"} <= used


def test_notes_and_hidden_files_are_skipped_but_a_corrupt_image_is_rejected(tmp_path: Path) -> None:
    """The demo's README.txt, a notes table and Finder's .DS_Store are counted as skipped; a .png that does not
    decode is still rejected by name."""
    from bcc_lightning.data.prepare import format_table

    raw = flat_tree(tmp_path / "raw", per_class=6)
    (raw / "README.txt").write_text("SYNTHETIC raw images\n")
    (raw / "M" / "notes.csv").write_text("file,comment\n")
    (raw / "B" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (raw / "B" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    summary = run_prepare(raw, tmp_path / "out", dedup_near=False)
    reasons = dict(csv.reader((tmp_path / "out" / "rejected.csv").open()))
    assert set(reasons) == {"source", "B/corrupt.png"} and "cannot decode" in reasons["B/corrupt.png"]
    assert summary["rejected"] == 1 and summary["skipped_not_images"] == 3
    assert sorted(summary["skipped_examples"]) == ["B/.DS_Store", "M/notes.csv", "README.txt"]
    assert "skipped 3 file(s) that are not images" in format_table(summary)
    assert "skipped" not in format_table({**summary, "skipped_not_images": 0, "skipped_examples": []})


def test_decompression_bomb_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=10)
    write_image(raw / "M" / "huge.png", size=(400, 400))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 400x400 is then over twice the limit
    run_prepare(raw, tmp_path / "out")
    reasons = dict(csv.reader((tmp_path / "out" / "rejected.csv").open()))
    assert "too large" in reasons["M/huge.png"]


def test_raw_is_never_modified(tmp_path: Path) -> None:
    raw = breakhis_tree(tmp_path / "raw", patients=4, per_patient=3)
    (raw / "benign" / "junk.txt").write_text("x")
    before = tree_digest(raw)
    run_prepare(raw, tmp_path / "out", group="breakhis", augment_copies=2, resize=16, format="jpg")
    run_prepare(raw, tmp_path / "out", group="breakhis", overwrite=True)
    assert tree_digest(raw) == before


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        run_prepare(raw, out)
    assert (out / "precious.txt").read_text() == "keep me"
    run_prepare(raw, out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "manifest.csv").is_file()
    assert not list(tmp_path.glob(".out.*"))


def test_overlapping_paths_are_refused(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=10)
    with pytest.raises(UserError, match="overlap"):
        run_prepare(raw, raw / "split", overwrite=True)
    with pytest.raises(UserError, match="overlap"):
        run_prepare(raw, tmp_path, overwrite=True)


@pytest.mark.parametrize(("layout", "message"), [
    ({}, "No labelled images"),
    ({"B/a.png": True}, "Only benign images"),
    ({"images/a.png": True, "M/b.png": True}, "Only malignant"),
    ({"patients/a.png": True}, "images outside class folders: patients/a.png"),
])
def test_layout_errors(tmp_path: Path, layout: dict, message: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for i, rel in enumerate(layout):
        write_image(raw / rel, seed=i)
    with pytest.raises(UserError, match=message):
        run_prepare(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_settings(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=4)
    with pytest.raises(UserError, match="sum to 1"):
        run_prepare(raw, tmp_path / "o", ratios=(0.7, 0.2, 0.2))
    with pytest.raises(UserError, match="capture group"):
        run_prepare(raw, tmp_path / "o", group="pattern", group_pattern="P\\d+")
    with pytest.raises(UserError, match="Unknown augment"):
        run_prepare(raw, tmp_path / "o", augment_ops=("tilt",), augment_copies=1)


def test_too_few_groups_is_a_clear_error(tmp_path: Path) -> None:
    raw = breakhis_tree(tmp_path / "raw", patients=2, per_patient=3)
    with pytest.raises(UserError, match="would be empty"):
        run_prepare(raw, tmp_path / "out", group="breakhis")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_resize_and_format(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for label, cls in enumerate("BM"):
        for i in range(10):
            write_image(raw / cls / f"{i}.tif", size=(70, 46), seed=label * 100 + i, fmt="TIFF")
    run_prepare(raw, tmp_path / "out", resize=35, format="jpg", jpg_quality=80)
    rows = read_manifest(tmp_path / "out")
    assert all(r["path"].endswith(".jpg") for r in rows)
    assert Image.open(tmp_path / "out" / rows[0]["path"]).size == (35, 23)


def test_interrupted_run_leaves_no_output(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=150)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcc_lightning.tasks.prepare", f"raw={raw}", f"out={out}", "num_workers=1", "resize=8",
         "augment.copies=6", "format=png", "dedup_near=false",  # the copy index's pass 1 is not what is tested
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    started = False
    while time.time() < deadline and not started:
        started = any(any(p.rglob("*.png")) for p in tmp_path.glob(".out.tmp-*"))
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert started, "the staging folder never received a file"
    assert proc.wait() == -signal.SIGKILL, "prepare finished before it could be interrupted"
    proc.wait()
    assert not out.exists()
    # The next run cleans the killed run's staging folder and completes.
    run_prepare(raw, out, dedup_near=False)
    assert (out / "summary.json").is_file() and not list(tmp_path.glob(".out.tmp-*"))


def test_cli_and_training_on_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = breakhis_tree(tmp_path / "raw", patients=6, per_patient=4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "bcc_lightning.tasks.prepare", f"raw={raw}", f"out={tmp_path / 'split'}",
         "group=breakhis", "num_workers=2", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train" in result.stdout and "groups" in result.stdout
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["groups_crossing_splits"] == 0

    monkeypatch.chdir(tmp_path)
    from bcc_lightning.tasks import train as training

    training.run(tiny_train_config(tmp_path / "split", ["trainer.fast_dev_run=true", "logger=none"]))
    assert (tmp_path / "metrics.json").is_file()

    again = subprocess.run(
        [sys.executable, "-m", "bcc_lightning.tasks.prepare", f"raw={raw}", f"out={tmp_path / 'split'}",
         f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


# ------------------------------------------------------------------------------------ near-duplicate copies

def _add_copies(raw: Path, sources: list[Path], names: list[tuple[str, str]]) -> dict[str, set[str]]:
    """Rotated/flipped/grayscale copies of `sources` under other names; returns {source rel: rels of its family}."""
    from PIL import ImageOps

    ops = (lambda im: im.transpose(Image.Transpose.ROTATE_90), ImageOps.mirror,
           lambda im: ImageOps.grayscale(im).convert("RGB"))
    families = {}
    for source, (first, second) in zip(sources, names):
        image = Image.open(source).convert("RGB")
        family = {source.relative_to(raw).as_posix()}
        for k, name in enumerate((first, second)):
            target = source.parent / name
            ops[k % 3](image if k == 0 else ops[2](image)).save(target)
            family.add(target.relative_to(raw).as_posix())
        families[source.relative_to(raw).as_posix()] = family
    return families


def _assert_families_together(out: Path, families: dict[str, set[str]]) -> None:
    by_source = {row["source"]: row for row in read_manifest(out) if row["augmentation"] == "none"}
    for family in families.values():
        placed = {(by_source[rel]["split"], by_source[rel]["fold"], by_source[rel]["group"]) for rel in family}
        assert len(placed) == 1, placed


@pytest.mark.parametrize("group", ["image", "breakhis", "pattern"])
def test_copies_of_a_source_stay_in_one_split_and_fold(tmp_path: Path, group: str) -> None:
    raw = tmp_path / "raw"
    if group == "breakhis":
        breakhis_tree(raw, patients=4, per_patient=3)
        sources = sorted(raw.rglob("*-40-000.png"))
        # Copies named after a patient of their own: the copy relation must join the two patients' groups.
        names = [(s.name.replace("-14-", "-14-9"), s.name.replace("-14-", "-14-8")) for s in sources]
        extra = {"group": "breakhis"}
    else:
        for label, cls in enumerate("BM"):
            for i in range(10):
                write_image(raw / cls / f"P{label}{i}_x.png", size=(36, 28), seed=label * 100 + i)
        sources = sorted(raw.rglob("P*_x.png"))[::2]
        names = [(f"P7{k}_copy.png", f"Q{k}_other.png") for k in range(len(sources))]
        extra = {"group": "pattern", "group_pattern": r"^([PQ]\d+)_"} if group == "pattern" else {"group": "image"}
    families = _add_copies(raw, sources, names)
    for folds in (0, 3):
        out = tmp_path / f"out{folds}"
        summary = run_prepare(raw, out, folds=folds, **extra)
        _assert_families_together(out, families)
        near = summary["near_duplicate_clusters"]
        assert near["count"] == len(families) and near["largest"] == 3
        assert near["images_in_clusters"] == 3 * len(families) and near["mixed_label_count"] == 0


def test_dedup_near_can_be_turned_off(tmp_path: Path) -> None:
    raw = flat_tree(tmp_path / "raw", per_class=8)
    summary = run_prepare(raw, tmp_path / "out", dedup_near=False)
    assert summary["near_duplicate_clusters"] is None
    with pytest.raises(UserError, match="group=content .* needs dedup_near=true"):
        run_prepare(raw, tmp_path / "out2", group="content", dedup_near=False)


def test_shifted_zoomed_cropped_copies_and_overlapping_tiles_stay_in_one_split(tmp_path: Path) -> None:
    """Issue 25, item 5 (prepare's side): dedup_near merges copies under an affine map and overlapping views, with
    the audit's detector, so the default split keeps each family in one split; min_overlap is checked."""
    import numpy as np

    from tests.data.test_duplicates import affine, crop, slide

    raw = tmp_path / "raw"
    families = {}
    for i in range(8):
        cls = "BM"[i % 2]
        big = slide(480, 240, seed=200 + i)
        field = big.crop((0, 0, 320, 240))
        (raw / cls).mkdir(parents=True, exist_ok=True)
        field.save(raw / cls / f"field{i}.png")
        members = {f"{cls}/field{i}.png"}
        if i < 3:  # a shifted, a zoomed and a cropped copy, and a tile overlapping the field by two thirds
            copies = {"shifted": affine(field, np.eye(2), (0.15, -0.1)), "zoomed": affine(field, np.eye(2) / 1.4),
                      "cropped": crop(field, 0.4, (0.2, 0.8), False), "tile": big.crop((107, 0, 427, 240))}
            for name, image in copies.items():
                image.save(raw / cls / f"{name}{i}.png")
                members.add(f"{cls}/{name}{i}.png")
        families[f"{cls}/field{i}.png"] = members
    summary = run_prepare(raw, tmp_path / "out", ratios=(0.5, 0.25, 0.25))
    near = summary["near_duplicate_clusters"]
    assert near["count"] == 3 and near["largest"] == 5 and near["overlap_pairs"] >= 3 and near["copy_pairs"] >= 3
    _assert_families_together(tmp_path / "out", families)
    with pytest.raises(UserError, match="min_overlap must be in"):
        run_prepare(raw, tmp_path / "bad", min_overlap=0.0)
