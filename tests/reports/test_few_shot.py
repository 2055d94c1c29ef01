"""Few-shot curves: whole groups, counts reaching n, nested and seeded draws, capped sizes, AUROC on separable data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bcc_lightning.reports import few_shot
from bcc_lightning.reports.few_shot import draw_groups, few_shot_curve, group_order, summarise
from bcc_lightning.utils.errors import UserError


def _patients(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """30 patients of 1-4 images; patients 0-11 benign, 12-23 malignant, 24-29 hold both classes."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for patient in range(30):
        for _ in range(int(rng.integers(1, 5))):
            labels.append(0 if patient < 12 else 1 if patient < 24 else int(rng.integers(0, 2)))
            groups.append(f"p{patient}")
    return np.array(labels), groups


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_groups_are_drawn_whole_and_counts_reach_n(n: int) -> None:
    labels, groups = _patients()
    for repeat in range(4):
        draw = draw_groups(labels, groups, n, group_order(groups, seed=7, repeat=repeat))
        drawn = {groups[i] for i in draw.indices}
        undrawn = {groups[i] for i in range(len(groups)) if i not in set(draw.indices.tolist())}
        assert not drawn & undrawn  # no group on both sides
        assert draw.groups == len(drawn)
        assert min(draw.per_class) >= n and draw.capped == (False, False)
        assert draw.per_class == (int((labels[draw.indices] == 0).sum()), int((labels[draw.indices] == 1).sum()))


def test_draws_are_nested_seeded_and_differ_between_repeats() -> None:
    labels, groups = _patients()
    order = group_order(groups, seed=3, repeat=0)
    assert order == group_order(list(reversed(groups)), seed=3, repeat=0)  # independent of the row order
    previous: set[int] = set()
    for n in (1, 2, 5, 10, 20):
        current = set(draw_groups(labels, groups, n, order).indices.tolist())
        assert previous <= current
        previous = current
    draws = [tuple(draw_groups(labels, groups, 5, group_order(groups, 3, r)).indices) for r in range(5)]
    assert len(set(draws)) > 1
    assert draws[2] == tuple(draw_groups(labels, groups, 5, group_order(groups, 3, 2)).indices)
    assert draws[0] != tuple(draw_groups(labels, groups, 5, group_order(groups, 4, 0)).indices)


def test_too_large_n_uses_everything_and_is_marked() -> None:
    labels, groups = _patients()
    draw = draw_groups(labels, groups, 10_000, group_order(groups, 0, 0))
    assert len(draw.indices) == len(labels) and draw.capped == (True, True)
    # One class short only: that one is capped, the other still stops near n.
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    groups = [str(i) for i in range(10)]
    draw = draw_groups(labels, groups, 3, group_order(groups, 0, 0))
    assert draw.per_class == (2, 3) and draw.capped == (True, False)


def test_augmented_copies_ride_along_uncounted() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    groups = ["a", "a", "b", "c", "c", "d"]
    counted = np.array([True, False, True, True, False, True])  # rows 1 and 4 are augmented copies
    draw = draw_groups(labels, groups, 1, ["a", "c", "b", "d"], counted)
    assert draw.indices.tolist() == [0, 1, 3, 4] and draw.per_class == (1, 1)


def _separable(n: int, rng: np.random.Generator, shift: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 8))
    x[:, 0] += shift * (2 * y - 1)
    return x.astype(np.float32), y


def test_curve_on_separable_embeddings() -> None:
    rng = np.random.default_rng(0)
    train, val, test = _separable(120, rng), _separable(40, rng), _separable(60, rng)
    groups = [f"p{i // 2}" for i in range(120)]  # patients of one image pair each (one benign, one malignant)
    rows = few_shot_curve(train, groups, val, test, [1, 5, 20, 1000], repeats=3, seed=0, Cs=[0.1, 1.0])
    assert [(r["n_per_class"], r["repeat"]) for r in rows][:4] == [(1, 0), (5, 0), (20, 0), (1000, 0)]
    assert list(rows[0]) == list(few_shot.CSV_COLUMNS)
    summary = {s["n_per_class"]: s for s in summarise(rows)}
    assert summary[20]["auroc"]["mean"] > 0.97 and summary[20]["accuracy"]["mean"] > 0.9
    assert summary[1000]["capped"] and summary[1000]["distinct_draws"] == 1
    assert summary[1000]["images_used_mean"] == 120
    assert not summary[20]["capped"] and summary[5]["repeats"] == 3
    assert rows == few_shot_curve(train, groups, val, test, [1, 5, 20, 1000], repeats=3, seed=0, Cs=[0.1, 1.0])


def test_auroc_matches_sklearn_and_noise_stays_near_chance() -> None:
    rng = np.random.default_rng(1)
    noise = [(rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 2) for n in (80, 40, 200)]
    groups = [str(i) for i in range(80)]
    rows = few_shot_curve(noise[0], groups, noise[1], noise[2], [10], repeats=4, seed=0, Cs=[1.0])
    assert all(0.3 < r["auroc"] < 0.7 for r in rows)
    # The AUROC of one draw, recomputed with scikit-learn from the same fit.
    from bcc_lightning.models.probe import fit_logistic

    draw = draw_groups(noise[0][1], groups, 10, group_order(groups, 0, 0))
    probe = fit_logistic(noise[0][0][draw.indices], noise[0][1][draw.indices], *noise[1], [1.0])
    expected = roc_auc_score(noise[2][1], probe.logits(noise[2][0]))
    assert math.isclose(rows[0]["auroc"], expected, abs_tol=1e-12)


def test_bad_settings_are_one_clear_error() -> None:
    assert few_shot.check_sizes(None, 5) == ([], 5)
    assert few_shot.check_sizes([10, 1, 10], "2") == ([1, 10], 2)
    for sizes in ([0], ["a"], [1.5], 3, [True]):
        with pytest.raises(UserError, match="probe.few_shot must be a list of whole numbers"):
            few_shot.check_sizes(sizes, 5)
    with pytest.raises(UserError, match="probe.few_shot_repeats"):
        few_shot.check_sizes([1], 0)


def test_outputs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    train, val, test = _separable(40, rng), _separable(20, rng), _separable(20, rng)
    rows = few_shot_curve(train, [str(i) for i in range(40)], val, test, [1, 2, 50], 2, 0, [1.0])
    summary = summarise(rows)
    text = few_shot.write_csv(rows, tmp_path / "few_shot.csv").read_text().splitlines()
    assert text[0] == ",".join(few_shot.CSV_COLUMNS) and len(text) == 7
    assert few_shot.write_figure(summary, tmp_path / "few_shot.png").stat().st_size > 1000
    lines = few_shot.markdown(summary, {"repeats": 2, "seed": 0, "groups": "each image its own group"})
    assert any(line.startswith("| 50 (capped: all) |") for line in lines)
