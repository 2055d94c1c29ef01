"""Embedding cache for linear probes: a frozen backbone's pooled features of every image of a split, computed once
into a float16 memory-mapped array and reused by later probes.

The key covers what changes the features: every file's path, size and modification time (as the decoded-image cache),
the backbone's name, its weights' sha256 and the preprocessing's fingerprint (size, mean/std, interpolation, stain
normalisation). A changed weight file has another sha256, so it never reads stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bcc_lightning.utils.atomic_io import cache_folder, write_json

VERSION = 1


# The model config keys that change what a backbone computes from the same weights (its family, architecture and
# embedding recipe: Virchow2's class token alone is not its class token ++ patch mean).
RECIPE_KEYS = ("source", "arch", "model_args", "pooling")


def embedding_recipe(model_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a model config that decides the embedding besides the name, weights and preprocessing; empty for
    the plain configs of before the recipes (their cache keys stay as they were)."""
    recipe = {k: (model_cfg or {}).get(k) for k in RECIPE_KEYS}
    recipe = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in recipe.items()
              if v not in (None, "", {}) and not (k == "source" and v == "timm")}
    return recipe


def embeddings_key(paths: Sequence[Path], backbone: str, weights_sha256: str, preprocess: dict[str, Any],
                   recipe: Mapping[str, Any] | None = None) -> str:
    """A short hash of the files (path, size, mtime), the backbone, its weights, the preprocessing and the embedding
    recipe (`embedding_recipe` of the model config)."""
    parts: list[Any] = [VERSION, backbone, weights_sha256, preprocess]
    if recipe:
        parts.append(dict(recipe))
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _open(path: Path, count: int, dim: int) -> np.ndarray:
    return np.asarray(np.memmap(path, dtype=np.float16, mode="r", shape=(count, dim)))


def open_or_compute(cache_dir: str | Path | None, split: str, key: str, count: int,
                    batches: Callable[[], Iterable[np.ndarray]],
                    log: Callable[[str], None] = print) -> tuple[np.ndarray, str]:
    """(features (count, D) as float32, 'reused' | 'built' | 'computed'): read from `cache_dir` when this key's file
    exists, else computed from `batches()` (arrays of (B, D)) and, with a cache folder, written atomically first."""
    if cache_dir is None:
        features = np.concatenate([np.asarray(b, dtype=np.float32) for b in batches()]) if count else np.zeros((0, 0))
        return features.astype(np.float32), "computed"
    cache_dir = cache_folder(cache_dir, "embedding cache", "set probe.cache to a writable folder, or probe.cache=null "
                             "to keep the embeddings in memory")
    meta_path = cache_dir / f"{split}-{key}.json"
    target = cache_dir / f"{split}-{key}.f16"
    if target.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        dim = int(meta.get("dim", 0))
        if int(meta.get("count", -1)) == count and target.stat().st_size == count * dim * 2:
            return _open(target, count, dim).astype(np.float32), "reused"
    log(f"Computing the '{split}' embeddings of {count} images into {target}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=cache_dir)
    os.close(fd)
    try:
        with open(tmp, "wb") as handle:  # streamed: the features of a large split never sit in memory twice
            dim = 0
            for batch in batches():
                batch = np.asarray(batch, dtype=np.float16)
                dim = batch.shape[1]
                handle.write(np.ascontiguousarray(batch).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The sidecar goes last: a file without it (an interrupted write) is never read, only rebuilt.
    write_json(meta_path, {"split": split, "count": count, "dim": dim, "dtype": "float16", "version": VERSION})
    return _open(target, count, dim).astype(np.float32), "built"
