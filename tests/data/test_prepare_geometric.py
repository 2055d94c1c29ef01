"""Issue 25 item 5: prepare's Keras-style warps, augment.before_split=true, and group=content re-splitting clean.

Also the done-when of the original protocol (augment, then split): its output audits leaky, and re-split with
group=content it audits clean (this replaces a slower test of the same flow with flips only).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bcc_lightning.data.audit import audit_splits, verdict
from tests.conftest import read_manifest, run_prepare
from tests.data.test_duplicates import slide

WARPS = ("shift", "zoom", "crop", "shear", "keras")


def _expected_leaks(rows: list[dict[str, str]]) -> dict[str, set[str]]:
    """Per audited pair ("test->train"), the images that must be flagged: a copy whose source sits in the earlier
    split, or a source with a copy there (a copy and its source always share the copy's or the source's whole area;
    two copies of one source may share nothing, so they are not required)."""
    original = {r["source"]: r for r in rows if r["augmentation"] == "none"}
    copies = defaultdict(list)
    for r in rows:
        if r["augmentation"] != "none":
            copies[r["source"]].append(r)
    expected: dict[str, set[str]] = defaultdict(set)
    for source, kids in copies.items():
        for kid in kids:
            for query, reference in ((kid, original[source]), (original[source], kid)):
                pair = f"{query['split']}->{reference['split']}"
                if pair in ("val->train", "test->train", "test->val"):
                    expected[pair].add(query["path"])
    return expected


def test_geometric_copies_before_split_are_caught_and_content_resplits_clean(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for i in range(6):
        cls = "BM"[i % 2]
        (raw / cls).mkdir(parents=True, exist_ok=True)
        slide(256, 256, seed=400 + i).save(raw / cls / f"field{i}.png")
    contaminated = tmp_path / "contaminated"
    messages: list[str] = []
    from bcc_lightning.data.prepare import PrepareSettings, prepare

    summary = prepare(PrepareSettings(raw=str(raw), out=str(contaminated), augment_before_split=True,
                                      augment_copies=2, augment_ops=("rot90", "hflip", *WARPS),
                                      augment_fill_mode="reflect", dedup_near=False), log=messages.append)
    assert summary["protocol"].startswith("CONTAMINATED") and any("CONTAMINATED" in m for m in messages)
    rows = read_manifest(contaminated)
    applied = [r["augmentation"] for r in rows if r["augmentation"] != "none"]
    assert len(applied) == 12 and all(any(op in a for a in applied) for op in WARPS), applied  # one warp per copy
    home = {r["source"]: r["split"] for r in rows if r["augmentation"] == "none"}
    outside = sum(r["split"] != home[r["source"]] for r in rows if r["augmentation"] != "none")
    assert summary["contamination"]["outside"] == outside > 0 and f": {outside} of 12 augmented" in summary["protocol"]

    # The audit finds every copy of a source (and every source of a copy) across splits, and nothing else.
    leaky = audit_splits(contaminated, cache_dir=False, workers=0)
    expected = _expected_leaks(rows)
    assert expected["test->train"] and not leaky.summary()["clean"]
    family = {r["path"]: r["source"] for r in rows}
    found: dict[str, set[str]] = defaultdict(set)
    for row in leaky.rows:
        assert family[row["path"]] == family[row["copy_of"]], row  # no pair across two sources
        found[f"{row['split']}->{row['copy_split']}"].add(row["path"])
    for pair, must in expected.items():
        assert must <= found[pair], (pair, must - found[pair], leaky.rows)
    assert leaky.summary()["test_with_copy_in_train"] == len(found["test->train"])
    assert f"bcc-prepare raw={leaky.root} out=NEW group=content" in verdict(leaky)

    # group=content re-splits the contaminated folder: every copy with its source, and the audit is clean.
    resplit = tmp_path / "resplit"
    prepared = run_prepare(contaminated, resplit, group="content")
    assert prepared["grouping"]["groups"] == 6 and "CONTAMINATED" not in prepared["protocol"]
    splits_of_source = defaultdict(set)
    for row in read_manifest(resplit):
        splits_of_source[family[row["source"]]].add(row["split"])
    assert len(splits_of_source) == 6 and all(len(s) == 1 for s in splits_of_source.values()), splits_of_source
    names = [row["path"] for row in read_manifest(resplit)]
    kept = 18 - prepared["duplicates"]  # byte-identical copies, if any, are dropped as exact duplicates
    assert len(names) == len(set(names)) == kept
    clean = audit_splits(resplit, cache_dir=False, workers=0)
    assert clean.summary()["clean"], clean.rows
    assert verdict(clean) == f"No copies across splits among {kept} images."
