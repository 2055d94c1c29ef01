"""Decoded-image cache: each split decoded and resized once into a memory-mapped uint8 array, reused across epochs
and runs. The key covers every file's path, size and modification time plus the input size and interpolation, so
any change to the files or the size makes a new cache. Loader workers map the same file (the OS shares the pages):
nothing is copied per worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from bcc_lightning.utils.atomic_io import cache_folder
from bcc_lightning.utils.errors import UserError

VERSION = 1


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bcc_lightning"


def cache_key(paths: Sequence[Path], img_size: int, interpolation: str, variant: str = "") -> str:
    """`variant`: anything else that changes the pixels (the preprocessing's fingerprint: stain normalisation)."""
    digest = hashlib.sha256(json.dumps([VERSION, img_size, interpolation] + ([variant] if variant else [])).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


class CachedArray:
    """A lazily opened read-only memmap of shape (N, S, S, 3); pickles as its path, never as the data."""

    def __init__(self, path: Path, count: int, size: int) -> None:
        self.path, self.shape = path, (count, size, size, 3)
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "shape": self.shape, "_array": None}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array[index]


class _Decoded(Dataset):
    """Decodes in loader workers for a parallel build. A UserError travels back as its message, so the main process
    can raise it cleanly (a worker's exception would arrive wrapped in a traceback text)."""

    def __init__(self, paths: Sequence[Path], decode: Callable[[Path], np.ndarray], shape: tuple[int, ...]) -> None:
        self.paths, self.decode, self.shape = list(paths), decode, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        try:
            return self.decode(self.paths[index]), ""
        except UserError as exc:
            return np.zeros(self.shape, dtype=np.uint8), str(exc)


def _decoded(paths: Sequence[Path], decode: Callable[[Path], np.ndarray], shape: tuple[int, ...],
             workers: int) -> Iterator[np.ndarray]:
    """Decoded images in order; with workers > 0 several at a time (`decode` must then pickle: no lambdas)."""
    if workers <= 0:
        yield from (decode(path) for path in paths)
        return
    # Batches, not single images: one shared-memory block per 32 images keeps the hand-over cheap.
    loader = DataLoader(_Decoded(paths, decode, shape), batch_size=32, num_workers=workers)
    for pixels, errors in loader:
        for image, error in zip(pixels.numpy(), errors):
            if error:
                raise UserError(error)
            yield image


def open_or_build(cache_dir: str | Path, split: str, paths: Sequence[Path], img_size: int, interpolation: str,
                  decode: Callable[[Path], np.ndarray], log: Callable[[str], None] = print,
                  workers: int = 0, variant: str = "") -> CachedArray:
    """The cache for these files at this size: opened if it exists, else built (atomically) first, decoding in
    `workers` processes."""
    cache_dir = cache_folder(cache_dir, "image cache", "set data.cache to a writable folder or data.cache=null")
    key = cache_key(paths, img_size, interpolation, variant)
    target = cache_dir / f"{split}-{img_size}px-{key}.u8"
    shape = (len(paths), img_size, img_size, 3)
    if target.is_file() and target.stat().st_size == int(np.prod(shape)):
        return CachedArray(target, len(paths), img_size)
    needed = int(np.prod(shape))
    log(f"Building the decoded-image cache for '{split}' ({len(paths)} images at {img_size}px, "
        f"{needed / 2**20:.0f} MiB) in {target}")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=cache_dir)
    os.close(fd)
    try:
        array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
        for index, pixels in enumerate(_decoded(paths, decode, shape[1:], workers)):
            array[index] = pixels
        array.flush()
        del array
        os.replace(tmp, target)
        (cache_dir / f"{target.name}.json").write_text(json.dumps(
            {"split": split, "count": len(paths), "img_size": img_size, "interpolation": interpolation,
             "first": str(paths[0]) if paths else None}, indent=2))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return CachedArray(target, len(paths), img_size)
