"""Local features for copies that share tissue under a similarity or affine map (shift, zoom, crop, shear, tiles).

The global disc descriptor of bcc_lightning.data.duplicates only lines two images up about their centres, so it
misses a shifted, zoomed, cropped or sheared copy. Here each image keeps its ORB keypoints (oriented FAST corners
with rotation-steered binary descriptors over an 8-level scale pyramid: no weights, a few milliseconds per image):

* candidates come from locality-sensitive hashing of the binary descriptors (bit sampling: a few whole bytes of a
  descriptor form one key, in several tables); two images that share tissue share many keys, and pairs are counted
  per bucket after one sort, so the search never compares every pair of images;
* a candidate is verified by matching its descriptors (Hamming, ratio test) and fitting an affine map with RANSAC
  (cv2.estimateAffine2D); a plausible map with enough inliers spread over the shared region is a match;
* the map then gives the shared area as a fraction of each image (the reference's rectangle mapped into the query
  and intersected with it).

Near-uniform images (background, pen marks) have too little texture to match anything; they are flagged `blank`
and kept out of matching. Thresholds are calibrated by benchmarks/near_duplicates.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Working resolution: large images are reduced to about this many pixels (ORB's cost and its keypoints' scale then
# do not depend on the scanner), small ones enlarged so their short side has room for ORB's 31-pixel patches.
MAX_PIXELS = 400_000
MIN_SIDE = 256
N_FEATURES = 500
FAST_THRESHOLD = 12  # below OpenCV's 20: pale H&E has low-contrast corners
DESCRIPTOR_BYTES = 32

# Blank test on a 64-wide thumbnail: the share of 8x8-pixel cells whose luminance std exceeds BLANK_CELL_STD, and
# the share of pixels further than BLANK_PIXEL_DEVIATION from the median (x3, so 5 % of pixels weighs like 15 % of
# cells); the smaller of the two below BLANK_TEXTURE (or fewer than MIN_KEYPOINTS keypoints) is background or a pen
# mark. A pen stroke crosses many cells but covers few pixels; noise moves many pixels but stays inside each cell.
BLANK_CELL_STD = 4.0
BLANK_PIXEL_DEVIATION = 12.0
BLANK_TEXTURE = 0.15
MIN_KEYPOINTS = 24

# Candidate search: TABLES hash tables, each keyed by KEY_BYTES bytes of the descriptor; buckets holding more than
# BUCKET_CAP descriptors are common texture ("stop words") and vote for nothing.
TABLES = 20
KEY_BYTES = 4
BUCKET_CAP = 24
# Each colliding descriptor pair predicts the map's scale (ratio of keypoint sizes) and rotation (difference of
# keypoint angles); votes are counted per (scale, rotation) bin and a pair scores its fullest bin. Look-alike
# texture collides in every bin, the same tissue under one map piles up in one (Lowe's Hough step).
SCALE_BIN = 0.5  # log2 units: half an octave
ANGLE_BIN = 30.0  # degrees
MIN_VOTES = 3
MAX_CANDIDATES = 16  # per image, strongest by votes

# Verification.
RATIO = 0.8  # Lowe's ratio on Hamming distances
MAX_DISTANCE = 64  # of 256 bits: a farther nearest neighbour is no correspondence whatever the ratio
RANSAC_FRACTION = 0.008  # reprojection threshold as a fraction of the query's diagonal
MIN_INLIERS = 14
MIN_INLIER_RATIO = 0.15  # inliers among ratio-test matches
SCALE_RANGE = (0.3, 3.4)  # singular values of the linear part: zoom 0.5-2x and crops to 25 % area fit inside
MAX_ANISOTROPY = 2.5  # ratio of singular values: anisotropic zoom and 20 degree shear stay well below
MAX_SHEAR = 30.0  # degrees, of the QR decomposition: a 20 degree shear measures ~20, Keras' combination <= ~17
MIN_SPREAD = 0.04  # inliers' convex hull as a fraction of the query area: a map resting on a corner is no proof

_SEED_KEYS = 1234


@dataclass(frozen=True)
class LocalFeatures:
    """ORB keypoints of one image in its original pixel coordinates, and how textured the image is."""

    xy: np.ndarray  # float32 (K, 2) x, y
    desc: np.ndarray  # uint8 (K, 32)
    desc_mirror: np.ndarray  # uint8 (K, 32): the same keypoints described in the left-right mirrored image
    texture: float  # fraction of textured cells, 0..1
    frame: np.ndarray | None = None  # float32 (K, 2): log2 of the keypoint's size (original pixels), angle (deg)

    @property
    def blank(self) -> bool:
        return self.texture < BLANK_TEXTURE or len(self.xy) < MIN_KEYPOINTS


def texture_fraction(luma: np.ndarray) -> float:
    """How much of the image carries texture (0..1; see BLANK_TEXTURE): textured cells and deviating pixels."""
    import cv2

    h, w = luma.shape
    width = 64
    height = max(8, round(h * width / max(w, 1)))
    thumb = cv2.resize(luma, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    rows, cols = height // 8, width // 8
    cells = thumb[:rows * 8, :cols * 8].reshape(rows, 8, cols, 8).std(axis=(1, 3))
    deviating = np.abs(thumb - np.median(thumb)) > BLANK_PIXEL_DEVIATION
    return float(min((cells > BLANK_CELL_STD).mean(), 3.0 * deviating.mean()))


def extract(luma: np.ndarray) -> LocalFeatures:
    """ORB keypoints and descriptors of a uint8 luminance image (HxW)."""
    import cv2

    luma = np.ascontiguousarray(luma, dtype=np.uint8)
    h, w = luma.shape
    texture = texture_fraction(luma) if h >= 8 and w >= 8 else 0.0
    scale = min(1.0, math.sqrt(MAX_PIXELS / max(h * w, 1)))
    scale = max(scale, MIN_SIDE / max(min(h, w), 1))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    work = luma if size == (w, h) else cv2.resize(
        luma, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # Stretch the 1st..99th percentile to the full range: a paler or darker copy then has the same FAST corners.
    lo, hi = np.percentile(work[::4, ::4], (1, 99))
    if hi - lo >= 8:
        work = cv2.convertScaleAbs(work, alpha=255.0 / (hi - lo), beta=-lo * 255.0 / (hi - lo))
    orb = cv2.ORB_create(nfeatures=N_FEATURES, scaleFactor=1.2, nlevels=8, edgeThreshold=19, patchSize=19,
                         fastThreshold=FAST_THRESHOLD)
    keypoints, desc = orb.detectAndCompute(work, None)
    if desc is None or not keypoints:
        empty = np.zeros((0, DESCRIPTOR_BYTES), np.uint8)
        return LocalFeatures(np.zeros((0, 2), np.float32), empty, empty, texture, np.zeros((0, 2), np.float32))
    # ORB is not mirror-invariant: describe the same keypoints in the mirrored image too (no second detection, a
    # third of the cost), so a flipped copy matches its source's descriptors.
    width = work.shape[1]
    mirrored = [cv2.KeyPoint(width - 1 - k.pt[0], k.pt[1], k.size, (180.0 - k.angle) % 360.0, k.response, k.octave,
                             i) for i, k in enumerate(keypoints)]
    kept, desc_m = orb.compute(np.ascontiguousarray(work[:, ::-1]), mirrored)
    desc_mirror = desc.copy()  # a keypoint the border filter dropped keeps its plain descriptor (matches nothing)
    if desc_m is not None:
        desc_mirror[[k.class_id for k in kept]] = desc_m
    xy = np.array([k.pt for k in keypoints], dtype=np.float32)
    # Pixel centres: work coordinate u covers original (u + 0.5) / scale - 0.5.
    xy = (xy + 0.5) * np.array([w / size[0], h / size[1]], np.float32) - 0.5
    frame = np.array([(math.log2(max(k.size, 1e-3) * w / size[0]), k.angle) for k in keypoints], np.float32)
    return LocalFeatures(xy, np.ascontiguousarray(desc, dtype=np.uint8), desc_mirror, texture, frame)


# ----------------------------------------------------------------------------------------------- candidates
def _keys(desc: np.ndarray, table: int) -> np.ndarray:
    """uint64 key of each descriptor in one table: KEY_BYTES bytes at positions fixed by the table's seed."""
    rng = np.random.default_rng([_SEED_KEYS, table])
    cols = rng.choice(DESCRIPTOR_BYTES, KEY_BYTES, replace=False)
    # The chosen bytes read as one big-endian word (KEY_BYTES of 1, 2, 4 or 8; uint8 descriptors): the first column
    # is the key's highest byte.
    return np.ascontiguousarray(desc[:, cols], dtype=np.uint8).view(f">u{KEY_BYTES}").ravel().astype(np.uint64)


VOTE_THREADS = 2  # tables are hashed in parallel: numpy's sorts and array arithmetic release the GIL
N_ANGLE_BINS = int(round(360 / ANGLE_BIN))
N_BINS = 16 * N_ANGLE_BINS  # scale bins: log2 ratio -8..+7 octaves (clipped)


def quantised_frame(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint size and angle as integers for the vote bins: log2 size in 1/256 of a SCALE_BIN, angle in 1/65536
    of a turn (a difference of two wraps around by itself in 16 bits)."""
    size = np.round(frame[:, 0].astype(np.float64) / SCALE_BIN * 256).astype(np.int32)
    angle = (np.round(frame[:, 1].astype(np.float64) / 360.0 * 65536).astype(np.int64) & 0xFFFF).astype(np.int32)
    return size, angle


def vote_bin(size_first: np.ndarray, angle_first: np.ndarray, size_second: np.ndarray,
             angle_second: np.ndarray) -> np.ndarray:
    """Bin of the map from the first keypoint to the second (quantised_frame units): scale ratio rounded to
    SCALE_BIN (clipped to -8..+7 bins), rotation floored to ANGLE_BIN."""
    scale = np.clip((size_second - size_first + 128) >> 8, -8, 7) + 8
    turn = (((angle_second - angle_first) & 0xFFFF) * N_ANGLE_BINS) >> 16
    return scale * N_ANGLE_BINS + turn


def vote_pairs(desc: np.ndarray, desc_mirror: np.ndarray, owner: np.ndarray, n_images: int,
               side: np.ndarray | None = None, tables: int = TABLES,
               frame: np.ndarray | None = None, min_votes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Image pairs that share hashed descriptors: (M, 3) rows a < b, mirrored (0/1), and their vote counts
    (pairs with fewer than min_votes are dropped here, before they take memory).

    desc, desc_mirror: (T, 32) plain and mirrored descriptors of all images stacked; owner: (T,) image of each row.
    A plain descriptor colliding with a mirrored one votes for a mirrored pair (one image a flip of the other).
    frame: (T, 2) log2 size and angle of each keypoint: votes then count in the pair's fullest (scale, rotation) bin.
    side: per image 0/1 to keep only pairs across two sets (query vs reference), None for all pairs.

    Cost: one sort of 2T packed (key, row) integers per table. Keys are KEY_BYTES = 4 bytes wide, so unrelated
    descriptors rarely collide even among tens of millions of keypoints; only rows that share their key with a
    neighbour are enumerated, and only into the pairs that can vote (across the sides, never mirrored against
    mirrored). A bucket of more than 2 * BUCKET_CAP rows pairs nothing, so no row has more than that many partners.
    """
    n = len(desc)
    owner = np.asarray(owner, np.int64)
    if not n:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    if frame is None:
        frame = np.zeros((n, 2), np.float32)
    # Rows are renumbered so that a sort by (key, row) lays every bucket out in the order the pairing needs: plain
    # before mirrored and, with sides, query rows before reference rows. A row's partners are then one range of the
    # bucket: all later rows for a plain row (within one set), the reference rows for a plain query row, the plain
    # reference rows for a mirrored query row. (Mirror against mirror would repeat plain against plain.)
    mirror = np.r_[np.zeros(n, np.int8), np.ones(n, np.int8)]
    group = mirror if side is None else (2 * np.asarray(side)[np.r_[owner, owner]] + mirror).astype(np.int8)
    perm = np.argsort(group, kind="stable")
    group, image, flag = group[perm], np.r_[owner, owner][perm], mirror[perm].astype(np.int64)
    size, angle = quantised_frame(frame)
    size = np.r_[size, size][perm]
    angle = np.r_[angle, (32768 - angle) & 0xFFFF][perm]  # a mirrored keypoint's angle is 180 - angle
    # Code of a vote: ((a * n_images + b) * 2 + mirrored) * N_BINS + bin, as the sum of a part from the first
    # image's row, a part from the second's (mirrored = flag_a + flag_b: never both) and the bin.
    first_part = (image * n_images * 2 + flag) * N_BINS
    second_part = (image * 2 + flag) * N_BINS
    del flag
    image = image.astype(np.int32) if n_images < 2**31 else image  # only compared from here on
    # With the query images numbered below the reference images (as local_candidates does), a query row is always
    # the pair's first image; otherwise each pair is put in order.
    sides = None if side is None else np.asarray(side)[owner]
    ordered = sides is not None and (not sides.any() or sides.all()
                                     or owner[sides == 0].max() < owner[sides == 1].min())
    rows = np.arange(2 * n, dtype=np.uint64)
    shift = np.uint64(max(1, int(2 * n).bit_length()))
    low = (np.uint64(1) << shift) - np.uint64(1)
    # When each group is one run of rows (always within one set; with sides, when the query's keypoints come
    # first), a table's keys are read block by block in the new order instead of gathered through perm.
    cut = np.flatnonzero(np.diff(group)) + 1
    blocks = [(int(perm[a]), int(perm[b - 1]) + 1) for a, b in zip(np.r_[0, cut], np.r_[cut, 2 * n])]
    if sum(b - a for a, b in blocks) != 2 * n or any(a < n < b for a, b in blocks):
        blocks = None
    else:
        del perm  # (memory: one int64 per row)

    def table_keys(table: int) -> np.ndarray:
        if blocks is None:
            return np.concatenate([_keys(desc, table), _keys(desc_mirror, table)])[perm]
        return np.concatenate([_keys(desc[a:b] if b <= n else desc_mirror[a - n:b - n], table) for a, b in blocks])

    def table_codes(table: int) -> dict[int, list[np.ndarray]]:
        """One table's votes, as uint32 offsets per block of image pairs (_blocks_of)."""
        keys = table_keys(table)
        # Key and row packed into one uint64: a plain sort (no argsort) orders rows by key.
        packed = np.sort(keys << shift | rows)
        del keys
        key = packed >> shift
        repeated = np.flatnonzero(key[1:] == key[:-1])
        if not len(repeated):
            return {}
        # Only rows in a bucket of two or more: usually a small fraction of all rows.
        member = np.zeros(len(key), bool)
        member[repeated] = member[repeated + 1] = True  # (a mask, not np.unique: numpy 2's hash unique is slow)
        member = np.flatnonzero(member)
        key, order = key[member], (packed[member] & low).astype(np.int64)
        del packed, member
        start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        count = np.diff(np.r_[start, len(key)])
        # Crowded buckets are common texture ("stop words"): they pair nothing.
        open_ = count <= 2 * BUCKET_CAP
        start, count = start[open_], count[open_]
        position = np.repeat(start, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        order = order[position]
        bucket = np.repeat(np.arange(len(start)), count)
        g = group[order]
        end = np.repeat(np.cumsum(count), count)  # bucket ends in the compacted positions
        here = np.arange(len(order))
        if side is None:
            lo = here + 1
            hi = np.where(g == 0, end, lo)
        else:
            # Groups are sorted inside a bucket: the reference rows (group >= 2) start after the query rows.
            per_group = np.bincount(bucket * 4 + g, minlength=4 * len(start)).reshape(-1, 4)
            base = np.cumsum(count) - count
            lo = np.repeat(base + per_group[:, 0] + per_group[:, 1], count)
            hi = np.where(g == 0, end, np.where(g == 1, lo + np.repeat(per_group[:, 2], count), lo))
        span = hi - lo
        source = np.flatnonzero(span > 0)
        span, lo = span[source], lo[source]
        votes: dict[int, list[np.ndarray]] = {}
        # Pairs are made a slice of rows at a time (about VOTE_CHUNK pairs), so a table's temporaries stay small.
        ends = np.cumsum(span)
        cuts = np.searchsorted(ends, np.arange(VOTE_CHUNK, int(ends[-1]) if len(ends) else 0, VOTE_CHUNK))
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(source)]):
            if a == b:
                continue
            part_span = span[a:b]
            total = int(part_span.sum())
            i = np.repeat(source[a:b], part_span)
            j = np.repeat(lo[a:b] - (np.cumsum(part_span) - part_span), part_span) + np.arange(total)
            i, j = order[i], order[j]
            if not ordered:
                keep = image[i] != image[j]  # two keypoints of one image
                i, j = i[keep], j[keep]
                swap = image[i] > image[j]
                i, j = np.where(swap, j, i), np.where(swap, i, j)
            codes = first_part[i] + second_part[j] + vote_bin(size[i], angle[i], size[j], angle[j])
            del i, j
            for block, offsets in _blocks_of(codes).items():
                votes.setdefault(block, []).append(offsets)
        return votes

    if VOTE_THREADS > 1 and tables > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(VOTE_THREADS) as pool:
            per_table = list(pool.map(table_codes, range(tables)))
    else:
        per_table = [table_codes(t) for t in range(tables)]
    return _count_votes(per_table, n_images, min_votes)


PAIR_BLOCK = 1 << 24  # image pairs per block of stored votes: a vote's offset in its block fits in 32 bits
VOTE_CHUNK = 1 << 22  # pairs enumerated at once in one table


def _blocks_of(codes: np.ndarray) -> dict[int, np.ndarray]:
    """One table's vote codes, sorted and cut into blocks of PAIR_BLOCK pairs, each kept as uint32 offsets from its
    block's start: half the memory of the codes themselves, which are most of the search's memory."""
    if not len(codes):
        return {}
    codes.sort()  # here, in the table's thread
    span = N_BINS * PAIR_BLOCK  # a pair's N_BINS codes never straddle two blocks
    block = codes // span
    cut = np.flatnonzero(block[1:] != block[:-1]) + 1
    offsets = (codes - block * span).astype(np.uint32)
    return dict(zip(block[np.r_[0, cut]].tolist(), np.split(offsets, cut)))


def _count_votes(tables: list[dict[int, list[np.ndarray]]], n_images: int, min_votes: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, votes) from each table's blocks of vote codes (_blocks_of; the dicts are consumed), one block of pairs
    at a time: a descriptor pair colliding in several tables votes once per table (closer descriptors weigh more),
    and a pair keeps its fullest (scale, rotation) bin."""
    found_pairs, found_votes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for block in sorted({b for table in tables for b in table}):
        chunk = np.concatenate([part for table in tables if block in table for part in table.pop(block)])
        chunk.sort()
        first = np.r_[0, np.flatnonzero(chunk[1:] != chunk[:-1]) + 1]
        votes = np.diff(np.r_[first, len(chunk)])
        pair = block * PAIR_BLOCK + (chunk[first] // N_BINS).astype(np.int64)
        del chunk
        first = np.r_[0, np.flatnonzero(np.diff(pair)) + 1]
        votes = np.maximum.reduceat(votes, first)
        pair = pair[first]
        keep = votes >= min_votes
        found_pairs.append(pair[keep])
        found_votes.append(votes[keep])
    pair, votes = np.concatenate(found_pairs), np.concatenate(found_votes)
    images_pair = pair // 2
    return np.stack([images_pair // n_images, images_pair % n_images, pair % 2], axis=1), votes


def select_candidates(pairs: np.ndarray, votes: np.ndarray, min_votes: int = MIN_VOTES,
                      per_image: int = MAX_CANDIDATES) -> np.ndarray:
    """Pairs with at least min_votes, keeping for each image its per_image strongest (a pair stays when either of
    its images ranks it among its own strongest); strongest first, so a caller that stops early verifies the likely
    copies."""
    keep = votes >= min_votes
    pairs, votes = pairs[keep], votes[keep]
    if not len(pairs):
        return pairs
    chosen = np.zeros(len(pairs), bool)
    for column in (0, 1):
        order = np.lexsort((-votes, pairs[:, column]))
        first = np.r_[0, np.flatnonzero(np.diff(pairs[order, column])) + 1]
        rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
        chosen[order[rank < per_image]] = True
    order = np.argsort(-votes[chosen], kind="stable")
    return pairs[chosen][order]


# ----------------------------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class Fit:
    """query ≈ A @ reference + t (pixels), how well it is supported and what share of each image it covers."""

    matrix: np.ndarray  # float64 (2, 3)
    inliers: int
    matches: int
    overlap_query: float
    overlap_reference: float

    @property
    def overlap(self) -> float:
        return max(self.overlap_query, self.overlap_reference)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def shared_area(matrix: np.ndarray, query_size: tuple[int, int], reference_size: tuple[int, int]) -> tuple[float,
                                                                                                         float]:
    """Fractions of the query and of the reference covered by the other under query = A ref + t (sizes h, w)."""
    import cv2

    (hq, wq), (hr, wr) = query_size, reference_size
    rect_q = np.array([[0, 0], [wq, 0], [wq, hq], [0, hq]], np.float32)
    corners = np.array([[0, 0], [wr, 0], [wr, hr], [0, hr]], np.float64)
    mapped = (corners @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    if np.cross(mapped[1] - mapped[0], mapped[2] - mapped[1]) < 0:
        mapped = mapped[::-1].copy()  # a mirroring map reverses the winding; intersectConvexConvex wants one order
    area, _ = cv2.intersectConvexConvex(rect_q, mapped)
    area = max(float(area), 0.0)
    mapped_area = max(_polygon_area(mapped.astype(np.float64)), 1e-9)
    return min(1.0, area / (wq * hq)), min(1.0, area / mapped_area)


def verify_pair(query: LocalFeatures, reference: LocalFeatures, query_size: tuple[int, int],
                reference_size: tuple[int, int], mirrored: bool = False) -> Fit | None:
    """Descriptor matches with the ratio test, then a RANSAC affine fit; None unless the map is plausible and
    supported by MIN_INLIERS spread inliers. mirrored: match the query's mirrored descriptors (a flipped copy); the
    fitted map then has a negative determinant."""
    import cv2

    if query.blank or reference.blank or len(query.xy) < MIN_INLIERS or len(reference.xy) < MIN_INLIERS:
        return None
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    knn = matcher.knnMatch(query.desc_mirror if mirrored else query.desc, reference.desc, k=2)
    good = [m[0] for m in knn
            if len(m) == 2 and m[0].distance < RATIO * m[1].distance and m[0].distance < MAX_DISTANCE]
    if len(good) < MIN_INLIERS:
        return None
    dst = query.xy[[m.queryIdx for m in good]]
    src = reference.xy[[m.trainIdx for m in good]]
    diagonal = math.hypot(*query_size)
    matrix, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_FRACTION * diagonal,
                                        maxIters=1000, confidence=0.995, refineIters=10)
    if matrix is None:
        return None
    inlier = mask.ravel().astype(bool)
    n_in = int(inlier.sum())
    if n_in < MIN_INLIERS or n_in < MIN_INLIER_RATIO * len(good):
        return None
    singular = np.linalg.svd(matrix[:, :2], compute_uv=False)
    if not (SCALE_RANGE[0] <= singular[1] and singular[0] <= SCALE_RANGE[1]) or singular[0] > MAX_ANISOTROPY * \
            singular[1]:
        return None
    if abs(describe_map(matrix, query_size, reference_size)["shear"]) > MAX_SHEAR:
        return None  # a chance fit on look-alike texture bends the map far more than any augmentation does
    hull = cv2.convexHull(dst[inlier].astype(np.float32))
    if cv2.contourArea(hull) < MIN_SPREAD * query_size[0] * query_size[1]:
        return None
    overlap_q, overlap_r = shared_area(matrix, query_size, reference_size)
    return Fit(matrix=matrix, inliers=n_in, matches=len(good), overlap_query=overlap_q, overlap_reference=overlap_r)


def describe_map(matrix: np.ndarray, query_size: tuple[int, int], reference_size: tuple[int, int]) -> dict[str, float]:
    """Scale, rotation, reflection, anisotropy, shear and shift of query = A ref + t, in readable units.

    A = R(angle) @ [[sx, k], [0, sy]] (QR decomposition, with a reflection folded into sy < 0). scale is
    sqrt(|det A|) (> 1: the query is a zoom-in), shear the angle whose tangent is k / sy, and shift the reference
    centre's displacement in the query as a fraction of the query's width and height.
    """
    a = matrix[:, :2]
    sx = math.hypot(a[0, 0], a[1, 0])
    angle = math.degrees(math.atan2(a[1, 0], a[0, 0]))
    det = float(np.linalg.det(a))
    sy = det / max(sx, 1e-12)
    k = (a[0, 0] * a[0, 1] + a[1, 0] * a[1, 1]) / max(sx, 1e-12)
    (hq, wq), (hr, wr) = query_size, reference_size
    centre = a @ np.array([(wr - 1) / 2, (hr - 1) / 2]) + matrix[:, 2]
    return {"scale": math.sqrt(abs(det)), "angle": -angle,  # image y points down: a CCW turn on screen is -atan2
            "mirrored": float(det < 0), "anisotropy": abs(sx / sy) if sy else float("inf"),
            "shear": math.degrees(math.atan2(k, abs(sy))),
            "shift_x": (centre[0] - (wq - 1) / 2) / wq, "shift_y": (centre[1] - (hq - 1) / 2) / hq}


def map_name(params: dict[str, float]) -> str:
    """Readable name of a fitted map: only the parts that differ from identity."""
    parts = []
    if params["mirrored"]:
        parts.append("flip")
    turn = (params["angle"] + 180.0) % 360.0 - 180.0
    if abs(turn) >= 2.0:
        parts.append(f"rotate{turn:+.0f}°")
    if abs(params["scale"] - 1) >= 0.03:
        parts.append(f"zoom×{params['scale']:.2f}")
    if abs(params["anisotropy"] - 1) >= 0.05:
        parts.append(f"aspect×{params['anisotropy']:.2f}")
    if abs(params["shear"]) >= 2.0:
        parts.append(f"shear{params['shear']:+.0f}°")
    if max(abs(params["shift_x"]), abs(params["shift_y"])) >= 0.01:
        parts.append(f"shift({100 * params['shift_x']:+.0f}%,{100 * params['shift_y']:+.0f}%)")
    return "+".join(parts) or "same geometry"
