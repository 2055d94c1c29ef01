"""Near-duplicate detection across dataset splits (augment-before-split leakage).

Each image is reduced to its inscribed central disc, which is the only region that survives every flip, 90° turn
and free rotation about the centre whatever the corner fill. The disc is resampled on a fixed polar grid of
luminance, so rotation becomes a circular shift along the angle axis and a reflection a reversal of it:

* a global vector of rotation- and reflection-invariant statistics (radial profile, ring contrast, log magnitudes
  of the low angular Fourier orders) finds candidates with blocked matrix products;
* the per-ring angular Fourier coefficients themselves verify a candidate: their circular cross-correlation,
  evaluated at every degree for the pair as is and mirrored, is the normalised correlation of the two discs at
  the best rotation and reflection. Different fields of view, even overlapping ones, do not line up about the
  centre and score low.

The disc sees only copies about the same centre. Copies that share tissue under any similarity or affine map
(shifted, zoomed, cropped, sheared, the Keras ImageDataGenerator's combination, overlapping tiles) are found by
bcc_lightning.data.local_features: ORB keypoints hashed into an inverted index for candidates, a RANSAC affine fit
to verify them, and the fitted map gives the area the two images share. Both run in find_copies; a pair is a match
when the disc correlation passes MATCH_THRESHOLD, or when the affine fit holds and the shared area covers at least
min_overlap of either image. Near-uniform images (background, pen marks) are `blank` and never matched.

Thresholds are calibrated by ``benchmarks/near_duplicates.py`` (see ``docs/near_duplicates_bench.json``).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from bcc_lightning.data import local_features as lf
from bcc_lightning.data.imageio import ImageDecodeError, load_rgb

# Geometry of the polar grid. The disc is resampled to THUMB x THUMB so that any input size gives the same grid;
# rings stop short of the rim because resampling and odd sizes move the centre by up to half a pixel.
THUMB = 64
RINGS = 20
ANGLES = 128
INNER, OUTER = 0.08, 0.92
ORDERS = 24  # angular Fourier orders kept for verification (low-pass: robust to JPEG and resampling) ...
MIN_ORDER = 2  # ... from order 2: order 1 is what a smooth illumination gradient adds, and it is not content
GLOBAL_ORDERS = 8  # orders whose magnitudes enter the global vector
ANGLE_STEPS = 360  # rotation search resolution: one degree

# Calibrated by benchmarks/near_duplicates.py on synthetic slides (copies vs tiles overlapping < 50 %).
# Normalised correlation of the discs at the best rotation/reflection. Measured: copies >= 0.969 (3,000 copies,
# 10,500 true pairs), other fields of view <= 0.42, distinct demo-generator images <= 0.57; this is the midpoint.
MATCH_THRESHOLD = 0.77
TOP_K = 16  # candidates verified per query image
MIN_OVERLAP = 0.5  # shared area (fraction of either image) from which two views under an affine map are one sample
COPY_OVERLAP = 0.9  # ... and from which one lies (almost) wholly within the other: a copy, not an overlapping view
GRAY_SATURATION = 0.02  # mean (max-min)/255 chroma below which an image counts as grayscale

FEATURE_DIM = 2 * RINGS + GLOBAL_ORDERS * RINGS
DESCRIPTOR_GRID = [THUMB, RINGS, ANGLES, MIN_ORDER, ORDERS, FEATURE_DIM, "orb-frames", lf.N_FEATURES, lf.MAX_PIXELS,
         lf.FAST_THRESHOLD]  # stored with saved sets; a mismatch means recompute


def _polar_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear gather indices/weights of the polar grid on the THUMB image, and the ring radii (pixels)."""
    half = THUMB / 2.0
    radii = np.linspace(INNER, OUTER, RINGS) * half
    phi = 2 * np.pi * np.arange(ANGLES) / ANGLES
    # Pixel centres sit at integer coordinates, so the disc centre is at half - 0.5.
    x = (half - 0.5) + radii[:, None] * np.cos(phi)[None, :]
    y = (half - 0.5) + radii[:, None] * np.sin(phi)[None, :]
    x0 = np.clip(np.floor(x).astype(np.int64), 0, THUMB - 2)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, THUMB - 2)
    fx, fy = x - x0, y - y0
    index = np.stack([y0 * THUMB + x0, y0 * THUMB + x0 + 1, (y0 + 1) * THUMB + x0, (y0 + 1) * THUMB + x0 + 1])
    weight = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]).astype(np.float32)
    return index, weight, radii


_INDEX, _WEIGHT, _RADII = _polar_grid()
_DISC = ((np.arange(THUMB)[:, None] - (THUMB / 2 - 0.5)) ** 2 + (np.arange(THUMB)[None, :] - (THUMB / 2 - 0.5)) ** 2
         <= (OUTER * THUMB / 2) ** 2)
# Outer rings cover more pixels; weighting by sqrt(radius) makes the polar correlation approximate the Cartesian one.
_RING_WEIGHT = np.sqrt(_RADII / _RADII.max()).astype(np.float32)[:, None]


@dataclass(frozen=True)
class Descriptor:
    """What the index needs for one image (about 2 KB once stored)."""

    vector: np.ndarray  # float32 (FEATURE_DIM,): rotation/reflection invariant, for candidate search
    coeffs: np.ndarray  # complex64 (RINGS, ORDERS): unit-norm angular spectrum, for verification
    saturation: float  # mean chroma, tells a grayscale copy from its colour source
    size: tuple[int, int]  # (height, width) of the decoded image
    tone: tuple[float, float]  # luminance mean and std inside the disc, 0..1
    local: lf.LocalFeatures | None = None  # ORB keypoints, for copies under an affine map


@dataclass(frozen=True)
class Match:
    """A verified near-duplicate pair: query ≈ transform(reference).

    score: the disc correlation for a copy about the centre (method "disc"), else the RANSAC inlier ratio (method
    "affine"). overlap_*: shared area as a fraction of each image. geometry: the fitted map query = A ref + t as
    scale, angle (degrees, counter-clockwise), mirrored, anisotropy, shear (degrees), shift_x / shift_y (the
    reference centre's offset in the query, as a fraction of its width / height).
    """

    query_index: int
    reference_index: int
    score: float
    transform: str
    kind: str = "copy"  # "copy": one image (almost) wholly within the other; "overlap": overlapping views
    method: str = "disc"
    overlap_query: float = 1.0
    overlap_reference: float = 1.0
    inliers: int = 0
    geometry: dict[str, float] = field(default_factory=dict)
    matrix: np.ndarray | None = field(default=None, compare=False, repr=False)  # (2, 3) query = A ref + t

    @property
    def overlap(self) -> float:
        return max(self.overlap_query, self.overlap_reference)


def _to_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode in ("RGB", "L") else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(np.nan_to_num(array.astype(np.float32)) * scale + 0.5, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        array = np.ascontiguousarray(array[..., :3])
    if array.ndim not in (2, 3) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"expected an HxW or HxWx3 image array, got shape {array.shape}")
    return Image.fromarray(array)


def describe(image: Image.Image | np.ndarray) -> Descriptor:
    """Descriptor of one decoded image (PIL image, or uint8 HxW / HxWx3 array)."""
    image = _to_image(image)
    width, height = image.size
    # Luminance (ITU-R 601) is what a grayscale copy keeps of its source, so a colour and a gray copy compare equal.
    luma = image.convert("L") if image.mode != "L" else image
    radius = min(width, height) / 2.0
    box = (width / 2.0 - radius, height / 2.0 - radius, width / 2.0 + radius, height / 2.0 + radius)
    # PIL's resize low-passes when it shrinks, so every input size ends as the same band-limited disc.
    thumb = np.asarray(luma.resize((THUMB, THUMB), Image.BILINEAR, box=box), dtype=np.float32)
    disc = thumb[_DISC]
    mean, std = float(disc.mean()), float(disc.std())
    normalised = (thumb - mean) / max(std, 1.0)  # brightness/contrast invariance; flat images stay ~0
    polar = (normalised.ravel()[_INDEX] * _WEIGHT).sum(axis=0)  # (RINGS, ANGLES)

    spectrum = np.fft.rfft(polar, axis=1) / ANGLES
    ring_mean = spectrum[:, 0].real
    ring_std = np.sqrt(2 * (np.abs(spectrum[:, 1:]) ** 2).sum(axis=1))
    magnitude = np.log(np.abs(spectrum[:, 1:GLOBAL_ORDERS + 1]) + 1e-3)
    vector = np.concatenate([ring_mean, np.log(ring_std + 1e-3), magnitude.ravel()]).astype(np.float32)

    coeffs = spectrum[:, MIN_ORDER:MIN_ORDER + ORDERS] * _RING_WEIGHT
    norm = float(np.sqrt((np.abs(coeffs) ** 2).sum()))
    coeffs = (coeffs / norm if norm > 1e-6 else np.zeros_like(coeffs)).astype(np.complex64)
    return Descriptor(vector=vector, coeffs=coeffs, saturation=_saturation(image), size=(height, width),
                      tone=(mean / 255.0, std / 255.0), local=lf.extract(np.asarray(luma)))


def _saturation(image: Image.Image) -> float:
    if image.mode != "RGB":
        return 0.0
    factor = max(1, min(image.size) // 48)  # a few thousand pixels are enough for a mean
    small = np.asarray(image.reduce(factor) if factor > 1 else image, dtype=np.int16)
    return float((small.max(axis=2) - small.min(axis=2)).mean() / 255.0)


@dataclass
class DescriptorSet:
    """Descriptors of many images as stacked arrays (row i describes paths[i]); failed files are in errors.

    Local features are stored flat: image i owns rows kp_offsets[i]:kp_offsets[i + 1] of kp_xy / kp_desc /
    kp_desc_mirror. A set made without them (kp_offsets None) matches by the disc alone.
    """

    paths: list[str]
    vectors: np.ndarray  # float32 (N, FEATURE_DIM)
    coeffs: np.ndarray  # float16 (N, RINGS, ORDERS, 2): real and imaginary parts, half the memory of complex64
    saturation: np.ndarray  # float32 (N,)
    sizes: np.ndarray  # int32 (N, 2) height, width
    tone: np.ndarray  # float32 (N, 2)
    errors: dict[str, str] = field(default_factory=dict)
    kp_offsets: np.ndarray | None = None  # int64 (N + 1,)
    kp_xy: np.ndarray | None = None  # float32 (T, 2)
    kp_desc: np.ndarray | None = None  # uint8 (T, 32)
    kp_desc_mirror: np.ndarray | None = None  # uint8 (T, 32)
    texture: np.ndarray | None = None  # float32 (N,)
    kp_frame: np.ndarray | None = None  # float32 (T, 2): log2 keypoint size, angle (degrees)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_local(self) -> bool:
        return self.kp_offsets is not None

    def local(self, i: int) -> lf.LocalFeatures:
        """Local features of row i."""
        if self.kp_offsets is None:
            empty = np.zeros((0, lf.DESCRIPTOR_BYTES), np.uint8)
            return lf.LocalFeatures(np.zeros((0, 2), np.float32), empty, empty, 1.0, np.zeros((0, 2), np.float32))
        a, b = int(self.kp_offsets[i]), int(self.kp_offsets[i + 1])
        return lf.LocalFeatures(self.kp_xy[a:b], self.kp_desc[a:b], self.kp_desc_mirror[a:b], float(self.texture[i]),
                                self.kp_frame[a:b])

    @property
    def blank(self) -> np.ndarray:
        """bool (N,): near-uniform images (background, pen marks), never matched."""
        if self.kp_offsets is None:
            return np.zeros(len(self), bool)
        return (self.texture < lf.BLANK_TEXTURE) | (np.diff(self.kp_offsets) < lf.MIN_KEYPOINTS)

    @classmethod
    def from_descriptors(cls, descriptors: Sequence[Descriptor], paths: Sequence[str] | None = None,
                         errors: dict[str, str] | None = None) -> DescriptorSet:
        """Stack single descriptors; paths default to their positions."""
        n = len(descriptors)
        names = [str(p) for p in paths] if paths is not None else [str(i) for i in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} paths for {n} descriptors")
        coeffs = np.stack([d.coeffs for d in descriptors]) if n else np.zeros((0, RINGS, ORDERS), np.complex64)
        local = [d.local for d in descriptors]
        has_local = all(f is not None for f in local)
        counts = [len(f.xy) for f in local] if has_local else []
        empty = np.zeros((0, lf.DESCRIPTOR_BYTES), np.uint8)
        return cls(
            paths=names,
            vectors=np.stack([d.vector for d in descriptors]) if n else np.zeros((0, FEATURE_DIM), np.float32),
            coeffs=np.stack([coeffs.real, coeffs.imag], axis=-1).astype(np.float16),
            saturation=np.array([d.saturation for d in descriptors], dtype=np.float32),
            sizes=np.array([d.size for d in descriptors], dtype=np.int32).reshape(n, 2),
            tone=np.array([d.tone for d in descriptors], dtype=np.float32).reshape(n, 2),
            errors=dict(errors or {}),
            kp_offsets=np.r_[0, np.cumsum(counts, dtype=np.int64)].astype(np.int64) if has_local else None,
            kp_xy=np.concatenate([f.xy for f in local] or [np.zeros((0, 2), np.float32)]) if has_local else None,
            kp_desc=np.concatenate([f.desc for f in local] or [empty]) if has_local else None,
            kp_desc_mirror=np.concatenate([f.desc_mirror for f in local] or [empty]) if has_local else None,
            texture=np.array([f.texture for f in local], np.float32) if has_local else None,
            kp_frame=np.concatenate([f.frame for f in local] or [np.zeros((0, 2), np.float32)]) if has_local else None,
        )

    @classmethod
    def concat(cls, sets: Sequence[DescriptorSet]) -> DescriptorSet:
        """Rows of all sets in order (e.g. train + val + test, to find copies within the union)."""
        errors: dict[str, str] = {}
        for s in sets:
            errors.update(s.errors)
        local = bool(sets) and all(s.has_local for s in sets)
        offsets = None
        if local:
            shifts = np.cumsum([0] + [int(s.kp_offsets[-1]) for s in sets[:-1]])
            offsets = np.concatenate([[0]] + [s.kp_offsets[1:] + shift for s, shift in zip(sets, shifts)])
        return cls(paths=[p for s in sets for p in s.paths],
                   vectors=np.concatenate([s.vectors for s in sets]), coeffs=np.concatenate([s.coeffs for s in sets]),
                   saturation=np.concatenate([s.saturation for s in sets]),
                   sizes=np.concatenate([s.sizes for s in sets]), tone=np.concatenate([s.tone for s in sets]),
                   errors=errors, kp_offsets=offsets.astype(np.int64) if local else None,
                   kp_xy=np.concatenate([s.kp_xy for s in sets]) if local else None,
                   kp_desc=np.concatenate([s.kp_desc for s in sets]) if local else None,
                   kp_desc_mirror=np.concatenate([s.kp_desc_mirror for s in sets]) if local else None,
                   texture=np.concatenate([s.texture for s in sets]) if local else None,
                   kp_frame=np.concatenate([s.kp_frame for s in sets]) if local else None)

    def subset(self, rows: Sequence[int]) -> DescriptorSet:
        """The given rows, in that order (errors are not carried)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = DescriptorSet(paths=[self.paths[i] for i in rows], vectors=self.vectors[rows], coeffs=self.coeffs[rows],
                            saturation=self.saturation[rows], sizes=self.sizes[rows], tone=self.tone[rows])
        if self.has_local:
            pieces = [np.arange(self.kp_offsets[i], self.kp_offsets[i + 1]) for i in rows]
            take = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
            out.kp_offsets = np.r_[0, np.cumsum([len(p) for p in pieces], dtype=np.int64)].astype(np.int64)
            out.kp_xy, out.kp_desc = self.kp_xy[take], self.kp_desc[take]
            out.kp_desc_mirror, out.texture = self.kp_desc_mirror[take], self.texture[rows]
            out.kp_frame = self.kp_frame[take]
        return out

    def complex_coeffs(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        part = self.coeffs[rows].astype(np.float32)
        return part[..., 0] + 1j * part[..., 1]

    def save(self, path: str | Path) -> Path:
        """Write as .npz atomically (temporary file in the same folder, then os.replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        local = {name: getattr(self, name) for name in _LOCAL_FIELDS} if self.has_local else {}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, paths=np.array(self.paths, dtype=np.str_), vectors=self.vectors,
                         coeffs=self.coeffs, saturation=self.saturation, sizes=self.sizes, tone=self.tone,
                         error_paths=np.array(list(self.errors), dtype=np.str_),
                         error_messages=np.array(list(self.errors.values()), dtype=np.str_),
                         grid=np.array([str(g) for g in DESCRIPTOR_GRID]), **local)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> DescriptorSet:
        """Read a set written by save(); refuses one computed with another grid or other local features."""
        with np.load(path, allow_pickle=False) as data:
            grid = data["grid"].tolist()
            if grid != [str(g) for g in DESCRIPTOR_GRID]:
                raise ValueError(f"{path}: descriptors made with grid {grid}; recompute them with this version")
            local = {name: data[name] for name in _LOCAL_FIELDS if name in data}
            return cls(paths=data["paths"].tolist(), vectors=data["vectors"], coeffs=data["coeffs"],
                       saturation=data["saturation"], sizes=data["sizes"], tone=data["tone"],
                       errors=dict(zip(data["error_paths"].tolist(), data["error_messages"].tolist())), **local)


_LOCAL_FIELDS = ("kp_offsets", "kp_xy", "kp_desc", "kp_desc_mirror", "texture", "kp_frame")


def _describe_path(path: str) -> tuple[Descriptor | None, str | None]:
    try:
        return describe(load_rgb(path)), None
    except ImageDecodeError as exc:
        return None, str(exc)


def _single_threaded_opencv() -> None:
    """Worker processes are the parallelism: OpenCV's own thread pool in each would only oversubscribe the cores."""
    import cv2

    cv2.setNumThreads(1)


def describe_files(paths: Iterable[str | Path], workers: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> DescriptorSet:
    """Describe image files with a process pool (workers=0: in this process); unreadable files go to .errors."""
    names = [str(p) for p in paths]
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    results: list[tuple[Descriptor | None, str | None]] = []
    if workers <= 0 or len(names) < 2 * max(workers, 1):
        iterator: Iterable[tuple[Descriptor | None, str | None]] = map(_describe_path, names)
        pool = None
    else:
        # Not fork: a child forked while OpenCV's (or torch's) thread pool holds a lock in the parent hangs on its
        # first call into that library. forkserver starts workers from a clean process (spawn where unavailable).
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # The server imports this module once (its imports pull in torch: seconds) and each worker forks from
            # it; without the preload every worker pays that import before its first image.
            context.set_forkserver_preload([__name__])
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_single_threaded_opencv, mp_context=context)
        # Chunks amortise the inter-process round trip; a descriptor is ~2 KB so results are cheap to send back.
        iterator = pool.map(_describe_path, names, chunksize=max(1, min(64, len(names) // (8 * workers))))
    try:
        for done, result in enumerate(iterator, 1):
            results.append(result)
            if progress is not None:
                progress(done, len(names))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    good = [(name, d) for name, (d, _) in zip(names, results) if d is not None]
    errors = {name: err for name, (_, err) in zip(names, results) if err is not None}
    return DescriptorSet.from_descriptors([d for _, d in good], [name for name, _ in good], errors)


def standardised(query: DescriptorSet, reference: DescriptorSet, same: bool) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors after per-dimension standardisation over both sets, so no single feature dominates cosines."""
    pool = query.vectors if same else np.concatenate([query.vectors, reference.vectors])
    if len(pool) >= 8:
        rng = np.random.default_rng(0)
        sample = pool[rng.choice(len(pool), min(len(pool), 20000), replace=False)].astype(np.float64)
        mean, std = sample.mean(axis=0), sample.std(axis=0) + 1e-6
    else:  # too few rows for statistics; with so few every pair is a candidate anyway
        mean, std = np.zeros(pool.shape[1]), np.ones(pool.shape[1])

    def unit(v: np.ndarray) -> np.ndarray:
        z = ((v - mean) / std).astype(np.float32)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-6)

    q = unit(query.vectors)
    return q, (q if same else unit(reference.vectors))


def candidates(query: DescriptorSet, reference: DescriptorSet | None = None, top_k: int = TOP_K,
               block: int = 1024) -> np.ndarray:
    """Candidate pairs (M, 2): each query row's top_k reference rows by cosine, via blocked matrix products.

    Memory is block x len(reference) floats; within one set (reference None) self-pairs are excluded and each
    unordered pair is returned once.
    """
    import torch  # only the search needs it; describe() stays light for worker processes

    same = reference is None
    ref = query if reference is None else reference
    n_query, n_ref = len(query), len(ref)
    k = min(top_k, n_ref - 1 if same else n_ref)
    if n_query == 0 or k <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    q, r = standardised(query, ref, same)
    q_t, r_t = torch.from_numpy(q), torch.from_numpy(r)
    found = []
    with torch.inference_mode():
        for start in range(0, n_query, block):
            sims = q_t[start:start + block] @ r_t.T
            if same:
                rows = torch.arange(sims.shape[0])
                sims[rows, rows + start] = -float("inf")
            index = torch.topk(sims, k, dim=1, sorted=False).indices.numpy()
            rows = np.repeat(np.arange(start, start + index.shape[0]), k)
            found.append(np.stack([rows, index.ravel()], axis=1))
    pairs = np.concatenate(found)
    if same:
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    return pairs


_PHI = 2 * np.pi * np.arange(ANGLE_STEPS) / ANGLE_STEPS
_ORDER = np.arange(MIN_ORDER, MIN_ORDER + ORDERS)
# Re(sum_k C_k e^{-ik phi}) = Cr.cos + Ci.sin: the circular cross-correlation at every degree as one matmul.
_COS = np.cos(_ORDER[:, None] * _PHI[None, :]).astype(np.float32)
_SIN = np.sin(_ORDER[:, None] * _PHI[None, :]).astype(np.float32)


def verify(query: DescriptorSet, reference: DescriptorSet, pairs: np.ndarray,
           batch: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best normalised correlation of each pair over rotations (1°) and reflection.

    Returns (score, mirrored, angle_degrees). For a plain pair the query is the reference turned by `angle`
    counter-clockwise (as PIL's rotate); for a mirrored pair it is the reference flipped left-right and then
    turned by angle - 180.
    """
    n = len(pairs)
    score = np.zeros(n, dtype=np.float32)
    mirrored = np.zeros(n, dtype=bool)
    angle = np.zeros(n, dtype=np.float32)
    for start in range(0, n, batch):
        part = pairs[start:start + batch]
        a = query.complex_coeffs(part[:, 0])
        b = reference.complex_coeffs(part[:, 1])
        best = []
        for c in ((a * b.conj()).sum(axis=1), (a * b).sum(axis=1)):  # plain, mirrored (mirror conjugates)
            corr = c.real.astype(np.float32) @ _COS + c.imag.astype(np.float32) @ _SIN
            arg = corr.argmax(axis=1)
            best.append((corr[np.arange(len(arg)), arg], arg))
        (s0, a0), (s1, a1) = best
        flip = s1 > s0
        score[start:start + len(part)] = np.where(flip, s1, s0)
        mirrored[start:start + len(part)] = flip
        angle[start:start + len(part)] = np.where(flip, a1, a0) * (360.0 / ANGLE_STEPS)
    return score, mirrored, angle


_DIHEDRAL_NAMES = {(False, 0): "", (False, 1): "rot90", (False, 2): "rot180", (False, 3): "rot270",
                   (True, 0): "hflip", (True, 1): "hflip+rot90", (True, 2): "vflip", (True, 3): "hflip+rot270"}


def _describe_transform(mirrored: bool, angle: float, query: DescriptorSet, reference: DescriptorSet,
                        qi: int, ri: int) -> str:
    """Best-effort name of query = T(reference): dihedral part, residual rotation, grayscale, resize, tone."""
    # Polar angles run clockwise on screen (y down) and the correlation is taken as q against r, so a CCW turn by t
    # peaks at t; hflip followed by a CCW turn t peaks at t + 180 (checked against PIL's transposes in the tests).
    turn = angle % 360.0 if not mirrored else (angle - 180.0) % 360.0
    quarter = int(math.floor((turn + 45.0) / 90.0)) % 4
    residual = (turn - 90.0 * quarter + 180.0) % 360.0 - 180.0
    parts = [_DIHEDRAL_NAMES[(bool(mirrored), quarter)]]
    if abs(residual) >= 3.0:
        parts.append(f"rotate{residual:+.0f}°")
    if query.saturation[qi] < GRAY_SATURATION <= 0.5 * reference.saturation[ri]:
        parts.append("grayscale")
    elif reference.saturation[ri] < GRAY_SATURATION <= 0.5 * query.saturation[qi]:
        parts.append("colour-of-grayscale")
    scale = float(query.sizes[qi].min()) / max(float(reference.sizes[ri].min()), 1.0)
    if abs(scale - 1.0) > 0.02:
        parts.append(f"resize×{scale:.2f}")
    (qm, qs), (rm, rs) = query.tone[qi], reference.tone[ri]
    if abs(qm - rm) > 0.04 * max(rm, 1e-3) or abs(qs - rs) > 0.10 * max(rs, 1e-3):
        parts.append("brightness/contrast")
    name = "+".join(p for p in parts if p)
    return name or "identity/re-encoded"


def local_candidates(query: DescriptorSet, reference: DescriptorSet | None = None) -> np.ndarray:
    """Candidate pairs (M, 3) from the local-feature index: query row, reference row, mirrored (0/1).

    Within one set (reference None) each unordered pair appears once with the smaller row first.
    """
    same = reference is None
    ref = query if same else reference
    if not (query.has_local and ref.has_local) or not len(query) or not len(ref):
        return np.zeros((0, 3), np.int64)
    sets = [query] if same else [query, ref]
    n = sum(len(s) for s in sets)
    per_image = np.concatenate([np.diff(s.kp_offsets) for s in sets])  # keypoints of each image, in row order
    owner = np.repeat(np.arange(n), per_image)
    # Only the keypoint arrays are stacked (not whole sets), and only the rows of images that can vote: blank
    # images never do.
    usable = np.repeat(~np.concatenate([s.blank for s in sets]), per_image)
    starts = np.cumsum([0] + [int(s.kp_offsets[-1]) for s in sets])

    def stacked(name: str) -> np.ndarray:
        return np.concatenate([getattr(s, name)[usable[start:start + int(s.kp_offsets[-1])]]
                               for s, start in zip(sets, starts)])

    side = None if same else np.r_[np.zeros(len(query), np.int64), np.ones(len(ref), np.int64)]
    pairs, votes = lf.vote_pairs(stacked("kp_desc"), stacked("kp_desc_mirror"), owner[usable], n, side,
                                 frame=stacked("kp_frame"), min_votes=lf.MIN_VOTES)
    pairs = lf.select_candidates(pairs, votes)
    if not same and len(pairs):
        pairs[:, 1] -= len(query)  # pairs run (query row, len(query) + reference row) since query rows come first
    return pairs


def _verify_local(query: DescriptorSet, reference: DescriptorSet, qi: int, ri: int,
                  mirrored: bool) -> lf.Fit | None:
    size_q = (int(query.sizes[qi, 0]), int(query.sizes[qi, 1]))
    size_r = (int(reference.sizes[ri, 0]), int(reference.sizes[ri, 1]))
    return lf.verify_pair(query.local(qi), reference.local(ri), size_q, size_r, mirrored)


def _disc_geometry(mirrored: bool, angle: float, query: DescriptorSet, reference: DescriptorSet, qi: int,
                   ri: int) -> dict[str, float]:
    turn = angle % 360.0 if not mirrored else (angle - 180.0) % 360.0
    scale = math.sqrt(float(np.prod(query.sizes[qi])) / max(float(np.prod(reference.sizes[ri])), 1.0))
    return {"scale": scale, "angle": (turn + 180.0) % 360.0 - 180.0, "mirrored": float(mirrored), "anisotropy": 1.0,
            "shear": 0.0, "shift_x": 0.0, "shift_y": 0.0}


def find_copies(query: DescriptorSet, reference: DescriptorSet | None = None, threshold: float = MATCH_THRESHOLD,
                top_k: int = TOP_K, min_overlap: float = MIN_OVERLAP, best_only: bool = False) -> list[Match]:
    """All verified near-duplicate pairs between query and reference, or within query when reference is None.

    A pair matches when its discs correlate (a copy about the centre: flips, rotations, grayscale, resizing...) or
    when an affine map between their keypoints holds and the shared area covers at least min_overlap of either
    image (shifted, zoomed, cropped, sheared copies and overlapping views). Blank images never match.

    Within one set, each unordered pair appears once with query_index < reference_index. A source with more than
    top_k copies may miss some direct pairs; clusters() still joins them through the pairs that were found.
    best_only: a query row that already has a copy (overlap >= COPY_OVERLAP) verifies no further candidates (the
    audit keeps one pair per image); candidates are verified strongest first, so that is usually the best pair.
    """
    ref = query if reference is None else reference
    blank_q, blank_r = query.blank, ref.blank
    disc_pairs = candidates(query, reference, top_k=top_k)
    found: dict[tuple[int, int], Match] = {}
    if len(disc_pairs):
        score, mirrored, angle = verify(query, ref, disc_pairs)
        for i in np.flatnonzero(score >= threshold):
            qi, ri = int(disc_pairs[i, 0]), int(disc_pairs[i, 1])
            if blank_q[qi] or blank_r[ri]:
                continue
            geometry = _disc_geometry(bool(mirrored[i]), float(angle[i]), query, ref, qi, ri)
            found[(qi, ri)] = Match(qi, ri, float(score[i]),
                                    _describe_transform(bool(mirrored[i]), float(angle[i]), query, ref, qi, ri),
                                    geometry=geometry)
    has_copy = {qi for qi, _ in found} if best_only else set()
    for qi, ri, fit in _verified(query, ref, local_candidates(query, reference), found, has_copy):
        if fit is None or fit.overlap < min_overlap or (qi, ri) in found:  # (the other orientation matched first)
            continue
        size_q, size_r = tuple(query.sizes[qi].tolist()), tuple(ref.sizes[ri].tolist())
        geometry = lf.describe_map(fit.matrix, size_q, size_r)
        name = lf.map_name(geometry)
        if query.saturation[qi] < GRAY_SATURATION <= 0.5 * ref.saturation[ri]:
            name += "+grayscale"
        found[(qi, ri)] = Match(qi, ri, fit.inliers / max(fit.matches, 1), name,
                                kind="copy" if fit.overlap >= COPY_OVERLAP else "overlap", method="affine",
                                overlap_query=fit.overlap_query, overlap_reference=fit.overlap_reference,
                                inliers=fit.inliers, geometry=geometry, matrix=fit.matrix)
        if best_only and fit.overlap >= COPY_OVERLAP:
            has_copy.add(qi)
    return sorted(found.values(), key=lambda m: (m.query_index, m.reference_index))


VERIFY_THREADS = 2  # OpenCV releases the GIL while it matches and fits, so threads use both cores
VERIFY_CHUNK = 256  # candidates per round: between rounds, queries that found a copy drop their other candidates


def _verified(query: DescriptorSet, ref: DescriptorSet, pairs: np.ndarray, found: dict, has_copy: set
              ) -> Iterable[tuple[int, int, lf.Fit | None]]:
    """(qi, ri, fit or None) for each local candidate not already found, verified in a small thread pool,
    in rounds so that has_copy (filled by the caller) skips the rest of a query's candidates."""
    from concurrent.futures import ThreadPoolExecutor

    blank_q, blank_r = query.blank, ref.blank
    todo = [(qi, ri, flip) for qi, ri, flip in pairs.tolist()
            if (qi, ri) not in found and not blank_q[qi] and not blank_r[ri]]
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        for start in range(0, len(todo), VERIFY_CHUNK):
            chunk = [t for t in todo[start:start + VERIFY_CHUNK] if t[0] not in has_copy]
            fits = pool.map(lambda t: _verify_local(query, ref, t[0], t[1], bool(t[2])), chunk)
            for (qi, ri, _), fit in zip(chunk, fits):
                yield qi, ri, fit


def clusters(n: int, pairs: Iterable[Match | tuple[int, int]]) -> list[int]:
    """Connected-component label of each of n items given matched pairs (indices into one set of n items).

    For cross-set matches, offset reference indices by len(query) and pass n = len(query) + len(reference).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = [(m.query_index, m.reference_index) if isinstance(m, Match) else (int(m[0]), int(m[1])) for m in pairs]
    if n == 0:
        return []
    rows = np.array([e[0] for e in edges], dtype=np.int64)
    cols = np.array([e[1] for e in edges], dtype=np.int64)
    if len(edges) and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= n):
        raise ValueError(f"pair index outside 0..{n - 1}")
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.tolist()
