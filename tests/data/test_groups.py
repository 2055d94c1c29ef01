"""data/groups.py: patients and slides inferred from manifests, public name schemes and folders; groups across
splits of a folder split elsewhere, as bcc-audit and training's data.audit report them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bcc_lightning.data.groups import group_overlap, infer_groups, overlap_gate, with_group_overlap
from bcc_lightning.utils.errors import UserError
from tests.conftest import breakhis_tree, compose_config, run_prepare, write_image


def _breakhis_rels(patients: int = 4, mags: tuple[int, ...] = (40, 100), per: int = 2) -> list[str]:
    """Paths as BreaKHis_v1 lays them out: benign/SOB/<type>/SOB_B_<type>_14-<id>/<mag>X/SOB_B_<type>-14-<id>-..."""
    rels = []
    for cls, kind in (("benign", "A"), ("malignant", "DC")):
        c = cls[0].upper()
        for p in range(patients):
            pid = f"14-{c}{p:03d}F"
            for mag in mags:
                rels += [f"{cls}/SOB/{kind}/SOB_{c}_{kind}_{pid}/{mag}X/SOB_{c}_{kind}-{pid}-{mag}-{i:03d}.png"
                         for i in range(per)]
    return rels


def test_breakhis_names_and_folders_give_the_patient() -> None:
    rels = _breakhis_rels()
    grouping = infer_groups(rels)
    assert grouping.rule == "breakhis" and grouping.unit == "patient" and grouping.count == 8
    assert grouping.groups[rels[0]] == "14-B000F"
    # Every magnification of one patient is one group: a 400X image is a zoomed crop of the 40X one.
    assert len({grouping.groups[r] for r in rels if "14-B000F" in r}) == 1
    assert grouping.text() == "grouped by patient (inferred from BreakHis names): 8 groups"
    # Files renamed, folders kept: the folder form SOB_B_A_14-22549AB still names the patient.
    renamed = [r.rsplit("/", 1)[0] + f"/{k}.png" for k, r in enumerate(rels)]
    folders = infer_groups(renamed)
    assert folders.rule == "breakhis" and folders.groups[renamed[0]] == "14-B000F" and folders.count == 8


@pytest.mark.parametrize(("names", "expected", "unit"), [
    (["TCGA-A2-A0T2-01Z-00-DX1_x0_y0.png", "TCGA-A2-A0T2-01Z-00-DX2_x5_y9.png"], "TCGA-A2-A0T2", "patient"),
    (["patient_004_node_4_tile0.png", "patient_004_node_2_tile7.png"], "patient_004", "patient"),
    (["10253_idx5_x1351_y1101_class0.png", "10253_idx5_x51_y1251_class1.png"], "10253", "patient"),
    (["BRACS_1003_N_1.png", "BRACS_1003_PB_32.png"], "BRACS_1003", "slide"),
])
def test_public_name_schemes(names: list[str], expected: str, unit: str) -> None:
    other = [n.replace(expected, expected[:-1] + "9") for n in names]
    rels = [f"B/{n}" for n in names] + [f"M/{n}" for n in other]
    grouping = infer_groups(rels)
    assert grouping.unit == unit and grouping.count == 2
    assert {grouping.groups[f"B/{n}"] for n in names} == {expected}


def test_patient_folders_below_the_class_folder() -> None:
    rels = [f"{c}/case{c}{p}/{i}.png" for c in "BM" for p in range(4) for i in range(3)]
    grouping = infer_groups(rels)
    assert grouping.rule == "folder" and grouping.count == 8 and grouping.groups["B/caseB2/1.png"] == "B/caseB2"
    assert grouping.text().startswith("grouped by folder (inferred from folders at level 1 below the class folder")
    # The deepest level that looks like patients wins; magnification folders below them never do.
    deep = [f"{c}/{kind}/case{c}{p}/{m}X/{i}.png" for c, kind in (("B", "A"), ("M", "DC")) for p in range(4)
            for m in (40, 100) for i in range(2)]
    grouping = infer_groups(deep)
    assert grouping.rule == "folder" and grouping.count == 8 and grouping.groups[deep[0]] == "B/A/caseB0"
    assert any("'100X', '40X'" in line for line in grouping.evidence)
    # Magnifications above the patient folders: one patient across magnifications is still one group.
    above = [f"{c}/{m}X/case{c}{p}/{i}.png" for c in "BM" for m in (40, 100) for p in range(4) for i in range(2)]
    grouping = infer_groups(above)
    assert grouping.rule == "folder" and grouping.count == 8 and grouping.groups[above[0]] == "B/caseB0"


def test_nothing_suggests_more_than_one_image() -> None:
    flat = [f"{c}/{c}_{i}.png" for c in "BM" for i in range(6)]
    grouping = infer_groups(flat)
    assert grouping.rule == "image" and grouping.by_image and grouping.count == 12
    assert grouping.text().endswith("if several images come from one patient, this split leaks")
    # Magnification folders straight under the class folder, or too few folders to split, are not patients.
    mags = [f"{c}/{m}X/{i}.png" for c in "BM" for m in (40, 100, 200, 400) for i in range(3)]
    assert infer_groups(mags).rule == "image"
    # One stray name that happens to look like a barcode does not make the folder "grouped by patient".
    stray = infer_groups([*flat, "B/TCGA-A2-A0T2-01Z_x.png"])
    assert stray.rule == "image" and stray.by_image and "only 1 of 13 images" in stray.evidence[0]
    two = [f"{c}/batch{b}/{i}.png" for c in "BM" for b in range(2) for i in range(5)]
    grouping = infer_groups(two, min_groups=3)
    assert grouping.rule == "image" and any("too few folders" in line for line in grouping.evidence)


def _split_elsewhere(root: Path, anonymous: bool) -> Path:
    """A train/val/test folder made by hand: patient 0 of each class has images in train AND test."""
    for label, cls in enumerate("BM"):
        for p in range(4):
            splits = ["train", "train", "test"] if p == 0 else [("train", "val", "test", "train")[p]] * 3
            for i, split in enumerate(splits):
                pid = f"{label}{p:03d}F"
                rel = (f"{cls}/patient{pid}/{i}.png" if anonymous else f"{cls}/SOB_{cls}_A-14-{pid}-40-{i:03d}.png")
                write_image(root / split / rel, size=(24, 18), seed=label * 1000 + p * 10 + i)
    return root


@pytest.mark.parametrize("anonymous", [False, True])
def test_group_overlap_of_a_folder_split_elsewhere(tmp_path: Path, anonymous: bool) -> None:
    root = _split_elsewhere(tmp_path / "data", anonymous)
    overlap = group_overlap(root)
    assert overlap["rule"] == ("folder" if anonymous else "breakhis")
    assert not overlap["clean"] and overlap["crossing"] == 2 and overlap["groups"] == 8
    assert overlap["pairs"] == {"test->train": {"groups": 2, "images": 2}}
    assert overlap["verdict"].startswith("Patients on both sides: 2 of 8 ")
    with pytest.raises(UserError, match="Patients on both sides.*data.audit=error"):
        overlap_gate("error", root, None)
    warned: list[str] = []
    merged = with_group_overlap({"clean": True, "verdict": "No copies across splits among 24 images."}, "warn", root,
                                None, warn=warned.append)
    assert not merged["clean"] and warned
    assert merged["verdict"].startswith("No copies across splits among 24 images. Patients on both sides: 2 of 8")


def test_folds_of_a_manifest(tmp_path: Path) -> None:
    """A cross-validation root: every fold against the others, or one run's validation fold against its training."""
    import csv

    from bcc_lightning.data.layout import MANIFEST_COLUMNS

    root = tmp_path / "cv"
    root.mkdir()
    rows = []
    for p, (cls, folds) in enumerate([("B", (0, 1)), ("B", (2, 2)), ("M", (0, 0)), ("M", (1, 1)), ("M", (2, 2))]):
        for i, fold in enumerate(folds):
            name = f"SOB_{cls}_A-14-{p:03d}F-40-{i:03d}.png"
            rows.append([f"train/{cls}/{name}", "train", "benign" if cls == "B" else "malignant", name, name, "x",
                         "none", str(fold), "x"])
    with (root / "manifest.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([MANIFEST_COLUMNS, *rows])
    (root / "summary.json").write_text(json.dumps({"settings": {"folds": 3, "holdout_test": True, "group": "image"}}))
    every = group_overlap(root)
    assert every["rule"] == "breakhis" and every["crossing"] == 1 and every["pairs"] == {
        "fold0->fold1": {"groups": 1, "images": 1}}
    run0 = group_overlap(root, fold=0)  # fold 0 validates, folds 1 and 2 train
    assert run0["pairs"] == {"val->train": {"groups": 1, "images": 1}} and "14-000F" in run0["verdict"]
    assert group_overlap(root, fold=2)["clean"]  # patient 0 sits in folds 0 and 1, both training folds of run 2


def test_prepared_folder_uses_its_manifest_and_an_image_grouped_one_is_still_checked(tmp_path: Path) -> None:
    raw = breakhis_tree(tmp_path / "raw", patients=5, per_patient=3)
    run_prepare(raw, tmp_path / "by_patient")
    overlap = group_overlap(tmp_path / "by_patient")
    assert overlap["rule"] == "manifest" and overlap["unit"] == "patient" and overlap["clean"]
    assert "BreakHis names" in overlap["source"]
    # The old default: one group per image. Its manifest says nothing about patients, so the names are read again.
    run_prepare(raw, tmp_path / "by_image", group="image", seed=1)
    overlap = group_overlap(tmp_path / "by_image")
    assert overlap["rule"] == "breakhis" and not overlap["clean"] and overlap["crossing"] > 0


def test_bcc_audit_reports_patients_on_both_sides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """bcc-audit's run() in this process (the CLI's exit codes are tested in test_audit.py): exit 1 on patients."""
    from bcc_lightning.tasks import audit as audit_task

    root = _split_elsewhere(tmp_path / "data", anonymous=False)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    cfg = compose_config("audit", [f"root={root}", f"cache={tmp_path / 'cache'}", "num_workers=1", "progress=false"])
    with pytest.raises(SystemExit) as stopped:
        audit_task.run(cfg)
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert json.loads((run / "leakage.json").read_text())["clean"]  # no image is a copy of another: only patients
    assert "Patients on both sides: 2 of 8 patients (BreakHis names)" in out
    assert json.loads((run / "groups.json").read_text())["crossing"] == 2
    assert "## Patients across splits" in (run / "leakage.md").read_text()


@pytest.mark.slow  # a train.py start-up; overlap_gate's error itself is tested above in the default suite
def test_training_audit_sees_patients_on_both_sides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.py's data.audit=error stops before training on patients on both sides, as it does on copies."""
    from bcc_lightning.tasks import train as training
    from tests.conftest import tiny_train_config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    root = _split_elsewhere(tmp_path / "data", anonymous=True)
    with pytest.raises(UserError, match="Patients on both sides: 2 of 8 folders.*stopped before training"):
        training.run(tiny_train_config(root, ["trainer.fast_dev_run=true", "logger=none", "data.audit=error"]))
    assert not (tmp_path / "history.csv").exists() and not (tmp_path / "metrics.json").exists()
