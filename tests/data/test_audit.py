"""bcc-audit: near-duplicate copies across splits, leakage.csv, the descriptor cache and the task's exit codes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from bcc_lightning.data import audit
from bcc_lightning.data.audit import LEAKAGE_COLUMNS, audit_splits, verdict, write_audit
from tests.conftest import REPO, flat_tree, make_folder, run_prepare, subprocess_env
from tests.data.test_duplicates import affine, crop, shear, slide


def leaky_folder(root: Path) -> Path:
    """A split folder whose val/test hold rotated, flipped and grayscale copies of train (and val) images."""
    make_folder(root, per_class=5)
    copies = [("train/B/img0.png", "test/B/copy_rot.png", lambda im: im.transpose(Image.Transpose.ROTATE_90)),
              ("train/M/img1.png", "val/M/copy_flip.png", ImageOps.mirror),
              ("train/B/img2.png", "test/B/copy_gray.png", ImageOps.grayscale),
              ("val/M/img3.png", "test/M/copy_of_val.png", ImageOps.flip)]
    for source, target, transform in copies:
        transform(Image.open(root / source).convert("RGB")).save(root / target)
    return root


def test_audit_flags_copies_across_splits(tmp_path: Path) -> None:
    result = audit_splits(leaky_folder(tmp_path / "data"), cache_dir=False, workers=0)
    summary = result.summary()
    assert summary["test_with_copy_in_train"] == 2
    assert summary["val_with_copy_in_train"] == 1
    assert summary["test_with_copy_in_val"] == 1
    assert summary["n_test"] == 13 and not summary["clean"]
    assert result.counts["test->train"] == {"B": 2, "M": 0, "total": 2}
    found = {(r["path"], r["copy_of"]) for r in result.rows}
    assert ("test/B/copy_rot.png", "train/B/img0.png") in found
    assert ("test/B/copy_gray.png", "train/B/img2.png") in found
    text = verdict(result)
    assert "2 of 13 test images (15.4 %) have a copy in train" in text
    assert f"bcc-prepare raw={result.root} out=NEW group=content" in text

    written = write_audit(tmp_path / "out", result)
    with written["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == LEAKAGE_COLUMNS and len(rows) == 4
    gray = next(r for r in rows if r["path"] == "test/B/copy_gray.png")
    assert gray["split"] == "test" and gray["copy_split"] == "train" and "grayscale" in gray["transform"]
    assert float(gray["score"]) > 0.9
    markdown = written["md"].read_text()
    assert "leakage_pairs.png" in markdown and (tmp_path / "out" / "leakage_pairs.png").stat().st_size > 1000
    assert "| test->train | 2 | 0 | 2 |" in markdown


def test_clean_folder_and_unreadable_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", per_class=4)
    (root / "test" / "B" / "broken.png").write_bytes(b"not an image")
    result = audit_splits(root, cache_dir=False, workers=0)
    assert result.summary()["clean"] and result.summary()["unreadable"] == 1
    assert any(p.endswith("broken.png") for p in result.errors)
    assert verdict(result).startswith("No copies across splits among 24 images.")
    assert "broken.png" in write_audit(tmp_path / "out", result)["md"].read_text()


def test_descriptor_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = leaky_folder(tmp_path / "data")
    first = audit_splits(root, cache_dir=tmp_path / "cache", workers=0)
    files = sorted((tmp_path / "cache" / "descriptors").glob("*.npz"))
    assert first.cached == 0 and len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]

    def no_describe(*args: object, **kwargs: object) -> None:
        raise AssertionError("described again despite the cache")

    monkeypatch.setattr(audit, "describe_files", no_describe)
    second = audit_splits(root, cache_dir=tmp_path / "cache", workers=0)
    assert second.cached == 3 and second.rows == first.rows
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # A changed file changes the key of its split only.
    monkeypatch.undo()
    Image.open(root / "val" / "B" / "img0.png").transpose(Image.Transpose.ROTATE_180).save(root / "val/B/img0.png")
    third = audit_splits(root, cache_dir=tmp_path / "cache", workers=0)
    assert third.cached == 2


def test_folds_are_audited(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_prepare(flat_tree(tmp_path / "raw", per_class=12), out, folds=3)
    every = audit_splits(out, cache_dir=False, workers=0)
    assert every.summary()["clean"] and set(every.sizes) == {"fold0", "fold1", "fold2", "test"}
    one = audit_splits(out, fold=1, cache_dir=False, workers=0)
    assert one.summary()["clean"] and set(one.sizes) == {"train", "val", "test"}


def _audit_cli(root: Path, run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bcc_lightning.tasks.audit", f"root={root}", f"hydra.run.dir={run}",
                           f"cache={run.parent / 'cache'}", "num_workers=1"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)


def test_audit_task_exit_codes(tmp_path: Path) -> None:
    clean = _audit_cli(make_folder(tmp_path / "clean", per_class=3), tmp_path / "run_clean")
    assert clean.returncode == 0, clean.stderr
    assert "No copies across splits" in clean.stdout
    leaky = _audit_cli(leaky_folder(tmp_path / "leaky"), tmp_path / "run_leaky")
    assert leaky.returncode == 1, leaky.stderr
    assert "have a copy in train" in leaky.stdout
    assert len(list(csv.DictReader((tmp_path / "run_leaky" / "leakage.csv").open()))) == 4
    missing = _audit_cli(tmp_path / "nowhere", tmp_path / "run_missing")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def geometric_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """Train holds tissue fields; val/test hold a shifted, a zoomed, a cropped and a sheared copy of four of them,
    an adjacent (non-overlapping) field of one, look-alike fields of other slides and a blank background."""
    import numpy as np

    big = [slide(640, 240, seed=60 + i) for i in range(6)]
    fields = [b.crop((0, 0, 320, 240)) for b in big]
    for split in ("train", "val", "test"):
        for label in "BM":
            (root / split / label).mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(fields):
        image.save(root / "train" / "BM"[i % 2] / f"field{i}.png")
    planted = {"test/B/shifted.png": (fields[0], lambda im: affine(im, np.eye(2), (0.15, -0.1)), "shift"),
               "test/M/zoomed.png": (fields[1], lambda im: affine(im, np.eye(2) / 1.4), "zoom×1.40"),
               "val/B/cropped.png": (fields[2], lambda im: crop(im, 0.4, (0.2, 0.8), False), "shift"),
               "test/M/sheared.png": (fields[3], lambda im: affine(im, shear(15)), "shear")}
    for rel, (source, make, _) in planted.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        make(source).save(root / rel)
    big[4].crop((320, 0, 640, 240)).save(root / "test" / "B" / "adjacent.png")  # touches field4, shares nothing
    slide(320, 240, seed=90).save(root / "val" / "M" / "other_slide.png")
    rng = np.random.default_rng(0)
    background = np.clip(rng.normal(235, 2.0, (240, 320, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(background).save(root / "train" / "B" / "background.png")
    Image.fromarray(background).transpose(Image.Transpose.ROTATE_90).save(root / "test" / "M" / "background.png")
    return root, {rel: expected for rel, (_, _, expected) in planted.items()}


def test_shifted_zoomed_cropped_sheared_copies_are_named(tmp_path: Path) -> None:
    root, planted = geometric_folder(tmp_path / "data")
    result = audit_splits(root, cache_dir=False, workers=0)
    found = {r["path"]: r for r in result.rows}
    assert set(found) == set(planted), found
    for rel, expected in planted.items():
        row = found[rel]
        assert expected in row["transform"], row
        assert row["copy_split"] == "train" and row["copy_of"].endswith(".png")
    assert found["val/B/cropped.png"]["overlap"] > 0.9 and found["val/B/cropped.png"]["overlap_copy_of"] < 0.5
    assert found["test/M/zoomed.png"]["scale"] == pytest.approx(1.4, rel=0.05)
    assert set(result.blank) == {"train/B/background.png", "test/M/background.png"}
    summary = result.summary()
    assert summary["test_with_copy_in_train"] == 3 and summary["val_with_copy_in_train"] == 1
    assert summary["copies"] + summary["overlapping_views"] == 4 and summary["blank"] == 2
    text = verdict(result)
    assert "3 of 5 test images (60.0 %) have a copy in train" in text and "both leak" in text
    assert "2 blank image(s)" in text

    written = write_audit(tmp_path / "out", result)
    rows = list(csv.DictReader(written["csv"].open()))
    assert {r["path"]: r["kind"] for r in rows} == {r: found[r]["kind"] for r in planted}
    markdown = written["md"].read_text()
    assert "shared region is outlined" in markdown and "Blank images (2)" in markdown

    # The CLI exits 1, and the same folder re-split by content audits clean.
    leaky = _audit_cli(root, tmp_path / "run")
    assert leaky.returncode == 1, leaky.stderr
    assert {r["path"] for r in csv.DictReader((tmp_path / "run" / "leakage.csv").open())} == set(planted)
    resplit = tmp_path / "resplit"
    run_prepare(root, resplit, group="content")
    clean = audit_splits(resplit, cache_dir=False, workers=0)
    assert clean.summary()["clean"], clean.rows


def test_error_gate_stops_on_an_overlapping_view(tmp_path: Path) -> None:
    from bcc_lightning.utils.errors import UserError

    root = tmp_path / "data"
    big = slide(720, 300, seed=70)
    files = {"train/B/left.png": big.crop((0, 0, 300, 300)), "train/M/other.png": slide(300, 300, seed=71),
             "val/B/far.png": big.crop((420, 0, 720, 300)),  # touches neither tile's tissue
             "val/M/other.png": slide(300, 300, seed=72), "test/M/other.png": slide(300, 300, seed=73),
             "test/B/middle.png": big.crop((120, 0, 420, 300))}  # shares 60 % of its area with train/B/left.png
    for rel, image in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / rel)
    result = audit_splits(root, cache_dir=False, workers=0)
    (row,) = result.rows
    assert (row["path"], row["copy_of"], row["kind"]) == ("test/B/middle.png", "train/B/left.png", "overlap")
    assert row["overlap"] == pytest.approx(0.6, abs=0.05) and "1 overlapping views" in verdict(result)
    with pytest.raises(UserError, match="have a copy in train.*data.audit=error"):
        audit.audit_gate("error", root, None, workers=0, cache_setting=str(tmp_path / "cache"))
    assert audit_splits(root, cache_dir=False, workers=0, min_overlap=0.7).summary()["clean"]
    with pytest.raises(UserError, match="min_overlap"):
        audit_splits(root, cache_dir=False, workers=0, min_overlap=1.5)
