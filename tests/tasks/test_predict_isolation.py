"""bcc-predict on a hostile folder: every file gets a row, a bad one only an error cell, and the run completes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from bcc_lightning.prediction import folder as prediction_folder
from bcc_lightning.tasks import predict as predict_task
from tests.conftest import compose_config, run_in
from tests.serving import best_ckpt, png_of_zeros


def test_every_file_gets_a_row_and_a_bad_one_only_its_error(trained_run: Path, demo_root: Path,
                                                            tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = sorted((demo_root / "test").rglob("*.png"))[:3]
    for path in good:
        shutil.copy(path, folder / "sub" / path.name)
    (folder / "long.png").write_bytes(png_of_zeros(1, 88_000_000))  # its resize once asked for 33.8 GB
    (folder / "scan.svs").write_text("not pixels")  # an unknown extension: tried, and its row says why not
    (folder / "cut.png").write_bytes(good[0].read_bytes()[:200])
    (folder / ".DS_Store").write_bytes(b"\0")  # hidden: not the user's data
    out = tmp_path / "preds.csv"
    cfg = compose_config("predict", [f"ckpt={best_ckpt(trained_run)}", f"input={folder}", f"out={out}",
                                     "threshold=0.5", "tta=false", "trainer.accelerator=cpu",
                                     "trainer.precision=32-true", "data.num_workers=0", "progress=false"])
    run_in(tmp_path, predict_task.run, cfg)  # returns: the run completes (exit status 0 from the command)
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert set(rows) == {p.name for p in good} | {"long.png", "scan.svs", "cut.png"}
    for path in good:
        row = rows[path.name]
        assert not row["error"] and row["pred_label"] in ("benign", "malignant")
        assert 0 <= float(row["prob_malignant"]) <= 1
    assert "aspect ratio" in rows["long.png"]["error"] and "over the limit" in rows["long.png"]["error"]
    assert "not an image file (.svs" in rows["scan.svs"]["error"]
    assert "not a readable image" in rows["cut.png"]["error"]
    for name in ("long.png", "scan.svs", "cut.png"):
        assert rows[name]["pred_label"] == "" and rows[name]["prob_malignant"] == ""


def test_a_file_that_fails_to_resize_is_its_own_row(trained_run: Path, demo_root: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Any failure while reading one file (here a resize that cannot allocate) is that file's error cell."""
    good = sorted((demo_root / "test").rglob("*.png"))[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    for path in good:
        shutil.copy(path, folder / path.name)
    real = prediction_folder.read_pixels

    def failing(path: Path, pre: object) -> object:
        if path.name == good[0].name:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return real(path, pre)

    monkeypatch.setattr(prediction_folder, "read_pixels", failing)
    rows = prediction_folder.predict(best_ckpt(trained_run), folder, tmp_path / "p.csv", threshold=0.5,
                                     num_workers=0, accelerator="cpu", precision="32-true")
    assert [bool(r["error"]) for r in rows] == [True, False]
    assert "can't allocate memory" in rows[0]["error"] and rows[1]["pred_label"] in ("benign", "malignant")


def test_notes_and_hidden_files_are_skipped_but_a_corrupt_image_gets_its_row(trained_run: Path, demo_root: Path,
                                                                              tmp_path: Path) -> None:
    """The demo's README.txt, a notes table and .DS_Store are counted in one line, not scored; a .png that does not
    decode still gets its error row."""
    good = sorted((demo_root / "test").rglob("*.png"))[0]
    folder = tmp_path / "in"
    (folder / "B").mkdir(parents=True)
    shutil.copy(good, folder / "B" / good.name)
    (folder / "README.txt").write_text("SYNTHETIC raw images\n")
    (folder / "B" / "notes.csv").write_text("file,comment\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    said: list[str] = []
    rows = prediction_folder.predict(best_ckpt(trained_run), folder, tmp_path / "p.csv", threshold=0.5,
                                     num_workers=0, accelerator="cpu", precision="32-true", log=said.append)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {good.name, "corrupt.png"}
    assert not by_name[good.name]["error"] and "not a readable image" in by_name["corrupt.png"]["error"]
    assert said == ["skipped 3 file(s) that are not images (hidden files, notes, tables, settings): .DS_Store, "
                    "B/notes.csv, README.txt"]
