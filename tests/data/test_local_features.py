"""The local-feature index of data/local_features.py: the hashed vote count, candidate order, early stop."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from bcc_lightning.data import duplicates as dup
from bcc_lightning.data import local_features as lf


def brute_votes(desc: np.ndarray, mirror: np.ndarray, owner: np.ndarray, frame: np.ndarray, side: np.ndarray | None,
                tables: int) -> dict[tuple[int, int, int], int]:
    """vote_pairs by its definition: every two rows sharing a key in a bucket of at most 2 * BUCKET_CAP rows."""
    n = len(desc)
    images, flags = np.r_[owner, owner], np.r_[np.zeros(n, int), np.ones(n, int)]
    # Bins in the module's integer units: log2 size in 1/256 of a scale bin, angle in 1/65536 of a turn.
    size_q = [int(round(float(s) / lf.SCALE_BIN * 256)) for s in frame[:, 0]]
    angle_q = [int(round(float(a) / 360.0 * 65536)) % 65536 for a in frame[:, 1]]
    size = size_q + size_q
    angle = angle_q + [(32768 - a) % 65536 for a in angle_q]
    bins: Counter = Counter()
    for table in range(tables):
        buckets = defaultdict(list)
        for row, key in enumerate(np.r_[lf._keys(desc, table), lf._keys(mirror, table)].tolist()):
            buckets[key].append(row)
        for rows in buckets.values():
            if len(rows) > 2 * lf.BUCKET_CAP:
                continue
            for x, first in enumerate(rows):
                for second in rows[x + 1:]:
                    a, b = images[first], images[second]
                    if a == b or flags[first] & flags[second] or (side is not None and side[a] == side[b]):
                        continue
                    i, j = (first, second) if a < b else (second, first)
                    a, b = min(a, b), max(a, b)
                    scale = min(7, max(-8, (size[j] - size[i] + 128) // 256))
                    turn = (angle[j] - angle[i]) % 65536 * 360 // 65536 // int(lf.ANGLE_BIN)
                    bins[(int(a), int(b), int(flags[i] ^ flags[j]), scale, turn)] += 1
    best: dict[tuple[int, int, int], int] = defaultdict(int)
    for (a, b, m, _, _), votes in bins.items():
        best[(a, b, m)] = max(best[(a, b, m)], votes)
    return dict(best)


@pytest.mark.parametrize("sides", ["interleaved", "query first", "one set"])
@pytest.mark.parametrize(("threads", "block", "chunk", "min_votes"), [(1, 1 << 24, 1 << 22, 1), (2, 3, 7, 1),
                                                                     (2, 1, 1, 2)])
def test_vote_pairs_counts_what_its_definition_says(sides: str, threads: int, block: int, chunk: int, min_votes: int,
                                                    monkeypatch) -> None:
    monkeypatch.setattr(lf, "VOTE_THREADS", threads)
    # Counting block by block, and making pairs a slice of rows at a time, change nothing.
    monkeypatch.setattr(lf, "PAIR_BLOCK", block)
    monkeypatch.setattr(lf, "VOTE_CHUNK", chunk)
    rng = np.random.default_rng(0)
    # 12 images of 40 keypoints from a small pool of descriptors, so keys collide often and some buckets overflow.
    pool = rng.integers(0, 256, (60, lf.DESCRIPTOR_BYTES), dtype=np.uint8)
    pool[:3] = 0  # a "stop word" shared by many rows
    desc = pool[rng.integers(0, len(pool), 480)]
    mirror = pool[rng.integers(0, len(pool), 480)]
    owner = np.repeat(np.arange(12), 40)
    frame = np.stack([rng.uniform(2, 6, 480), rng.uniform(0, 360, 480)], axis=1).astype(np.float32)
    side = {"interleaved": np.arange(12) % 2, "query first": (np.arange(12) >= 5).astype(int), "one set": None}[sides]
    pairs, votes = lf.vote_pairs(desc, mirror, owner, 12, side, tables=3, frame=frame, min_votes=min_votes)
    expected = {k: v for k, v in brute_votes(desc, mirror, owner, frame, side, 3).items() if v >= min_votes}
    assert {tuple(p): v for p, v in zip(pairs.tolist(), votes.tolist())} == expected
    assert len(pairs) > 20 and {0, 1} <= set(pairs[:, 2].tolist())  # the case is not trivial


def test_candidates_come_strongest_first() -> None:
    pairs = np.array([[0, 1, 0], [0, 2, 0], [1, 2, 1], [3, 4, 0]])
    chosen = lf.select_candidates(pairs, np.array([4, 9, 2, 6]), min_votes=3)
    assert chosen.tolist() == [[0, 2, 0], [3, 4, 0], [0, 1, 0]]


def test_best_only_keeps_one_copy_per_query_and_the_same_best(monkeypatch) -> None:
    from tests.data.test_duplicates import affine, slide

    field = slide(420, 300, seed=31)
    query = dup.DescriptorSet.from_descriptors([dup.describe(affine(field, np.eye(2), (0.05, 0.0)))])
    # Two references hold the query's tissue: the field itself and a copy shifted the other way.
    reference = dup.DescriptorSet.from_descriptors([dup.describe(field),
                                                    dup.describe(affine(field, np.eye(2), (-0.02, 0.01)))])
    calls = []
    verify = dup._verify_local
    monkeypatch.setattr(dup, "_verify_local", lambda *args: calls.append(args[2:4]) or verify(*args))
    every = dup.find_copies(query, reference)
    assert len(every) == 2 and len(calls) >= 2  # (each pair plain and mirrored)
    calls.clear()
    monkeypatch.setattr(dup, "VERIFY_CHUNK", 1)  # one candidate per round: the second is skipped, not verified
    (best,) = dup.find_copies(query, reference, best_only=True)
    assert len(calls) == 1 and best.kind == "copy"
    assert (best.query_index, best.reference_index) in {(m.query_index, m.reference_index) for m in every}
