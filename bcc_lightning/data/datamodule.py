"""LightningDataModule serving `root/{train,val,test}/{B,M}` (or benign/malignant) image folders."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from bcc_lightning.data.augment import AugmentConfig, augment
from bcc_lightning.data.cache import CachedArray, default_cache_dir, open_or_build
from bcc_lightning.data.imageio import ImageDecodeError, is_image_file, load_rgb
from bcc_lightning.data.labels import ACCEPTED_FOLDER_NAMES, CLASS_NAMES, label_from_folder
from bcc_lightning.errors import UserError

SPLITS = ("train", "val", "test")
HOW_TO_CREATE = (
    "Make it from a raw folder of B/M images with `python -m bcc_lightning.prepare raw=RAW out=ROOT`, try the "
    "synthetic demo with `python train.py experiment=demo`, or arrange your images as "
    "ROOT/{train,val,test}/{B,M}/*.png (jpg, tif and bmp work too); then pass `data.root=ROOT`."
)


def _show(paths: Sequence[Path]) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in paths)
    if not names:
        return "nothing"
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def scan_split(root: str | Path, split: str) -> list[tuple[Path, int]]:
    """All (image path, label) pairs of one split, sorted; a clear UserError when the layout is wrong."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"Data root {root.resolve()} does not exist or is not a folder. {HOW_TO_CREATE}")
    split_dir = root / split
    if not split_dir.is_dir() and (root / "summary.json").is_file() and '"folds": 0' not in (
            root / "summary.json").read_text():
        raise UserError(f"{root} is a cross-validation split (folds in manifest.csv) without a '{split}' folder: "
                        f"choose the fold to run with data.fold=k, or sweep them all with -m data.fold=0,1,2,...")
    if not split_dir.is_dir():
        found = [p for p in root.iterdir() if not p.name.startswith(".")]
        raise UserError(
            f"Data root {root} has no '{split}' folder (found: {_show(found)}); expected {root}/train, {root}/val "
            f"and {root}/test, each with class folders {ACCEPTED_FOLDER_NAMES}. {HOW_TO_CREATE}"
        )
    class_dirs = [p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    unknown = [p for p in class_dirs if label_from_folder(p.name) is None]
    if unknown:
        raise UserError(
            f"{split_dir} has folder(s) {_show(unknown)} that are not class names; class folders must be named "
            f"{ACCEPTED_FOLDER_NAMES}. Rename or move them out of the data root."
        )
    by_label: dict[int, list[Path]] = {0: [], 1: []}
    for class_dir in class_dirs:
        label = label_from_folder(class_dir.name)
        by_label[label].extend(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
    for label, files in by_label.items():
        if not files:
            raise UserError(
                f"{split_dir} has no {CLASS_NAMES[label]} images (class folders found: {_show(class_dirs)}). Each "
                f"split needs both classes with .jpg/.jpeg/.png/.tif/.tiff/.bmp files. {HOW_TO_CREATE}"
            )
    return sorted(((p, label) for label, files in by_label.items() for p in files), key=lambda item: str(item[0]))


@dataclass(frozen=True)
class Preprocess:
    """What the backbone expects; stored in checkpoints so evaluation reproduces it exactly."""

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"


def resize_op(pre: Preprocess) -> v2.Resize:
    # Resize the PIL image (SIMD uint8 path) to the square input: no crop, so no cell at the border is lost.
    return v2.Resize((pre.img_size, pre.img_size), interpolation=v2.InterpolationMode(pre.interpolation),
                     antialias=True)


def to_pixels(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Decoded RGB image -> uint8 CHW tensor at the input size: what loaders ship and the model normalises."""
    return v2.functional.pil_to_tensor(resize_op(pre)(image))


def decode_resized(path: Path, pre: Preprocess) -> torch.Tensor:
    """One file -> uint8 CHW tensor at the input size (the part of the pipeline the cache stores)."""
    try:
        image = load_rgb(path)
    except ImageDecodeError as exc:
        raise UserError(f"Cannot read a training image: {exc}. Remove or replace the file (bcc-prepare lists and "
                        f"skips unreadable files) and run again.") from exc
    return to_pixels(image, pre)


def decode_hwc(path: Path, pre: Preprocess) -> np.ndarray:
    """decode_resized as an (S, S, 3) array: one row of the decoded-image cache."""
    return decode_resized(path, pre).permute(1, 2, 0).numpy()


def fold_samples(root: str | Path, split: str, fold: int) -> list[tuple[Path, int]]:
    """(path, label) of one split of cross-validation run `fold`, from bcc-prepare's manifest.csv (no copying).

    With a held-out test split: val = fold k, train = the other folds, test = the test split. Without one:
    test = fold k, val = fold k+1 (mod K), train = the rest. Augmented copies only ever serve as training data.
    """
    root = Path(root)
    manifest, summary_file = root / "manifest.csv", root / "summary.json"
    if not manifest.is_file() or not summary_file.is_file():
        raise UserError(f"data.fold={fold} needs fold assignments, but {root} has no manifest.csv/summary.json. "
                        f"Make them with `python -m bcc_lightning.prepare raw=RAW out={root} folds=5`.")
    settings = json.loads(summary_file.read_text()).get("settings", {})
    folds, holdout = int(settings.get("folds") or 0), bool(settings.get("holdout_test", True))
    if folds < 2:
        raise UserError(f"{root} was prepared without folds (summary.json: folds={folds}); drop data.fold, or "
                        f"prepare again with folds=K.")
    if not 0 <= fold < folds:
        raise UserError(f"data.fold={fold} is out of range: {root} has {folds} folds (0..{folds - 1}).")
    if holdout:
        roles = {"val": {fold}, "test": set(), "train": set(range(folds)) - {fold}}
    else:
        roles = {"test": {fold}, "val": {(fold + 1) % folds}, "train": set(range(folds)) - {fold, (fold + 1) % folds}}
    samples = []
    with manifest.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            original = row["augmentation"] == "none"
            in_fold = row.get("fold", "") != "" and int(row["fold"]) in roles[split]
            if split == "test" and holdout:
                chosen = row["split"] == "test" and original
            else:
                chosen = in_fold and (original or split == "train")
            if chosen:
                samples.append((root / row["path"], label_from_folder(row["label"])))
    for label in (0, 1):
        if not any(lab == label for _, lab in samples):
            raise UserError(f"Fold {fold} of {root} has no {CLASS_NAMES[label]} images in its {split} split; "
                            f"prepare with fewer folds or more images.")
    return sorted(samples, key=lambda item: str(item[0]))


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


def resolve_num_workers(num_workers: int | str, gpu: bool) -> int:
    """`auto`: up to 4 when the CPU also trains (one worker already outpaces the model there, and the model needs
    the cores); when a GPU trains, every core but two (the main process and the pin-memory thread), up to 16, since
    the GPU consumes images several times faster than one worker decodes."""
    if num_workers != "auto":
        return int(num_workers)
    cores = os.cpu_count() or 1
    if gpu:
        return max(1, min(cores - 2, 16))
    return min(4, cores)


class BCCDataModule(L.LightningDataModule):
    def __init__(self, root: str | Path, preprocess: Preprocess | None, batch_size: int = 32,
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
        """(path, label) of a split, scanned once; needs no preprocessing, so it can run before the model exists
        (train.py checks the layout and counts classes for pos_weight=auto first)."""
        if split not in self._samples:
            self._samples[split] = (scan_split(self.root, split) if self.fold is None
                                    else fold_samples(self.root, split, self.fold))
        return self._samples[split]

    def dataset(self, split: str) -> ImageFolderDataset:
        if split not in self.datasets:
            if self.preprocess is None:
                raise RuntimeError("BCCDataModule.preprocess must be set (from the model) before loading images")
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
