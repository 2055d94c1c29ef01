"""LightningDataModule serving `root/{train,val,test}/{B,M}` (or benign/malignant) image folders."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bcc_lightning.data.augment import AugmentConfig, augment
from bcc_lightning.data.cache import CachedArray, default_cache_dir, open_or_build
from bcc_lightning.data.layout import SPLITS, fold_samples, scan_split
from bcc_lightning.data.preprocess import Preprocess, decode_hwc, decode_resized
from bcc_lightning.utils.device import resolve_num_workers
from bcc_lightning.utils.errors import UserError

log = logging.getLogger("bcc_lightning")


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled (or class-balanced) order drawn from (seed, epoch) alone: Lightning calls set_epoch before each
    epoch, so a run resumed from a checkpoint sees exactly the order an uninterrupted run would."""

    def __init__(self, labels: Sequence[int], seed: int, balanced: bool = False) -> None:
        self.labels, self.seed, self.balanced, self.epoch = list(labels), int(seed), balanced, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(index, augmentation seed) pairs: the dataset draws each view from its own seed."""
        base = self.seed * 1_000_003 + self.epoch
        generator = torch.Generator().manual_seed(base)
        if self.balanced:
            # Both classes equally likely, as many draws as images, with replacement.
            counts = {label: self.labels.count(label) for label in set(self.labels)}
            weights = torch.tensor([1.0 / counts[label] for label in self.labels], dtype=torch.double)
            order = torch.multinomial(weights, len(self.labels), replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(len(self.labels), generator=generator).tolist()
        return iter([(index, (base * 100_003 + position) % 2**62) for position, index in enumerate(order)])


class ImageFolderDataset(Dataset):
    """(uint8 image (3, S, S), label) from a list of files, decoded by the one decoder or read from the decoded cache.

    Pixels stay uint8 until the model normalises them on its device (BCCClassifier.forward): a quarter of the bytes
    through worker shared memory, pinned memory and the host-to-GPU copy.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], pre: Preprocess, augment: AugmentConfig | None = None,
                 cache: CachedArray | None = None) -> None:
        self.samples = list(samples)
        self.pre = pre
        self.augment = augment
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        # The training sampler passes (index, seed); plain indexing draws a seed from torch's global RNG.
        index, seed = item if isinstance(item, tuple) else (item, None)
        path, label = self.samples[index]
        if self.cache is not None:
            pixels = torch.from_numpy(np.array(self.cache[index])).permute(2, 0, 1)  # a private, writable copy
        else:
            pixels = decode_resized(path, self.pre)
        if self.augment is not None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, ()))
            pixels = augment(pixels, self.augment, torch.Generator().manual_seed(seed))
        return pixels, torch.tensor(label, dtype=torch.float32)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.samples]


class BCCDataModule(L.LightningDataModule):
    def __init__(self, root: str | Path, preprocess: Preprocess, batch_size: int = 32,
                 num_workers: int | str = "auto",
                 augment: AugmentConfig | None = None, pin_memory: bool | None = None,
                 test_split: str = "test", balanced_sampler: bool = False, seed: int = 0,
                 cache: str | Path | None = None, fold: int | None = None, gpu: bool | None = None,
                 cache_budget_gb: float = 20.0, samples: dict[str, list[tuple[Path, int]]] | None = None) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise UserError(f"data.batch_size must be at least 1 (got {batch_size}).")
        self.root = Path(root)
        self.preprocess = preprocess
        self.batch_size = int(batch_size)
        # gpu: whether a GPU consumes the batches (None: whenever one is present); sets the defaults below.
        gpu = torch.cuda.is_available() if gpu is None else gpu
        self.num_workers = resolve_num_workers(num_workers, gpu)
        self.augment = augment if augment is not None else AugmentConfig()
        self.pin_memory = gpu if pin_memory is None else pin_memory
        self.datasets: dict[str, ImageFolderDataset] = {}
        # samples: splits given as lists instead of scanned from `root` (external validation sets).
        self._samples: dict[str, list[tuple[Path, int]]] = dict(samples or {})
        # eval.py can point the test stage at another split (e.g. val) without a second code path.
        self.test_split = test_split
        self.balanced_sampler = balanced_sampler
        # cache: None (stream), "auto" (the user cache folder, if the decoded splits fit `cache_budget_gb` and the
        # disk), or a folder (always). Decided once, when the first split is loaded.
        self.cache_setting = None if cache in (None, "", "none", "null", "off") else str(cache)
        self.cache_budget_gb = float(cache_budget_gb)
        self.cache_dir: Path | None = None
        self._cache_decided = False
        self.seed = int(seed)
        self.fold = None if fold is None else int(fold)

    def samples(self, split: str) -> list[tuple[Path, int]]:
        """(path, label) of a split, scanned once (train.py checks the layout and counts classes for pos_weight=auto
        before it builds the model)."""
        if split not in self._samples:
            self._samples[split] = (scan_split(self.root, split) if self.fold is None
                                    else fold_samples(self.root, split, self.fold))
        return self._samples[split]

    def resolve_cache(self) -> Path | None:
        """Where the decoded splits go, decided once: `auto` caches when they fit the budget and the free disk
        space, and otherwise streams (decoding every image every epoch) and says why. None: streaming."""
        if not self._cache_decided:
            self._cache_decided = True
            self.cache_dir = self._choose_cache_dir()
        return self.cache_dir

    def _choose_cache_dir(self) -> Path | None:
        if self.cache_setting is None:
            return None
        if self.cache_setting != "auto":
            return Path(self.cache_setting).expanduser()
        target = default_cache_dir()
        count = 0
        for split in SPLITS:
            try:
                count += len(self.samples(split))
            except UserError:
                continue  # a split this run does not have (e.g. a fold layout without val); its own use will tell
        size = self.preprocess.img_size
        needed = count * size * size * 3
        probe = target
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if needed > self.cache_budget_gb * 2**30 or needed > free - 2**30:
            log.warning("Decoded-image cache off: %d images at %d px need %.1f GiB, more than data.cache_budget_gb=%g "
                        "or the free space in %s (%.1f GiB); streaming (every image decoded every epoch). Set "
                        "data.cache=DIR on a larger disk, or raise data.cache_budget_gb.", count, size,
                        needed / 2**30, self.cache_budget_gb, target, free / 2**30)
            return None
        log.info("Decoded-image cache: %s (%.2f GiB for %d images at %d px; reused by later runs; data.cache=null "
                 "streams instead)", target, needed / 2**30, count, size)
        return target

    def dataset(self, split: str) -> ImageFolderDataset:
        if split not in self.datasets:
            cache_dir = self.resolve_cache()
            augment = self.augment if split == "train" else None
            samples = self.samples(split)
            cache = None
            if cache_dir is not None:
                cache = open_or_build(cache_dir, split, [p for p, _ in samples], self.preprocess.img_size,
                                      self.preprocess.interpolation, partial(decode_hwc, pre=self.preprocess),
                                      log=log.info, workers=self.num_workers,
                                      variant=self.preprocess.fingerprint())
            self.datasets[split] = ImageFolderDataset(samples, self.preprocess, augment, cache)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": (self.test_split,),
                  "predict": (self.test_split,)}
        for split in needed.get(stage, SPLITS):
            self.dataset(split)

    def loader(self, split: str, train: bool = False) -> DataLoader:
        dataset = self.dataset(split)
        sampler = EpochSampler(dataset.labels, self.seed, self.balanced_sampler) if train else None
        # A last training batch of one image breaks BatchNorm ("more than 1 value per channel"): drop only that one.
        drop_last = train and len(dataset) % self.batch_size == 1 and len(dataset) > 1
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0, drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test_split)

    def class_counts(self, split: str) -> tuple[int, int]:
        labels = [label for _, label in self.samples(split)]
        return labels.count(0), labels.count(1)
