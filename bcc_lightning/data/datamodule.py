"""LightningDataModule serving `root/{train,val,test}/{B,M}` (or benign/malignant) image folders."""

from __future__ import annotations

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
                 cache: str | Path | None = None, fold: int | None = None, gpu: bool | None = None) -> None:
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
        self._samples: dict[str, list[tuple[Path, int]]] = {}
        # eval.py can point the test stage at another split (e.g. val) without a second code path.
        self.test_split = test_split
        self.balanced_sampler = balanced_sampler
        self.cache_dir = None if cache in (None, "", "none", "null") else (
            default_cache_dir() if cache == "auto" else Path(cache))
        self.seed = int(seed)
        self.fold = None if fold is None else int(fold)

    def samples(self, split: str) -> list[tuple[Path, int]]:
        """(path, label) of a split, scanned once (train.py checks the layout and counts classes for pos_weight=auto
        before it builds the model)."""
        if split not in self._samples:
            self._samples[split] = (scan_split(self.root, split) if self.fold is None
                                    else fold_samples(self.root, split, self.fold))
        return self._samples[split]

    def dataset(self, split: str) -> ImageFolderDataset:
        if split not in self.datasets:
            augment = self.augment if split == "train" else None
            samples = self.samples(split)
            cache = None
            if self.cache_dir is not None:
                cache = open_or_build(self.cache_dir, split, [p for p, _ in samples], self.preprocess.img_size,
                                      self.preprocess.interpolation, partial(decode_hwc, pre=self.preprocess),
                                      workers=self.num_workers)
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
