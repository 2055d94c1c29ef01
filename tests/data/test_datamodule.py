import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bcc_lightning.data.augment import AugmentConfig, rotate_reflect
from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.layout import scan_split
from bcc_lightning.data.preprocess import Preprocess
from bcc_lightning.utils.errors import UserError
from tests.conftest import make_folder, write_image

PRE = Preprocess(img_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize("names", [("B", "M"), ("benign", "malignant"), ("Benign", "MALIGNANT"), ("b", "m")])
def test_labels_fixed_whatever_the_folder_names(tmp_path: Path, names: tuple[str, str]) -> None:
    make_folder(tmp_path, per_class=2, splits=("train",), names=names)
    samples = scan_split(tmp_path, "train")
    assert {p.parent.name: label for p, label in samples} == {names[0]: 0, names[1]: 1}


def test_files_it_cannot_read_are_reported_once_not_silently_dropped(tmp_path: Path, caplog) -> None:
    make_folder(tmp_path, per_class=2, splits=("train",))
    (tmp_path / "train/B/scan.webp").write_bytes(b"RIFF....WEBP")
    (tmp_path / "train/M/slide.svs").write_bytes(b"II*")
    (tmp_path / "train/M/notes.txt").write_text("stain batch 3")  # plainly not an image: not worth a word
    with caplog.at_level("WARNING", logger="bcc_lightning.data.layout"):
        samples = scan_split(tmp_path, "train")
        scan_split(tmp_path, "train")  # train, eval and the audit all scan: one warning per folder
    assert len(samples) == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "2 file(s) left out" in warnings[0]
    assert ".webp x1" in warnings[0] and ".svs x1" in warnings[0] and "notes.txt" not in warnings[0]


def test_malignant_is_one_even_when_it_sorts_first(tmp_path: Path) -> None:
    root = tmp_path / "ok"
    make_folder(root, per_class=1, splits=("train",), names=("benign", "M"))  # 'M' sorts before 'benign'
    labels = {p.parent.name: label for p, label in scan_split(root, "train")}
    assert labels == {"benign": 0, "M": 1}


def test_nested_folders_and_mixed_formats(tmp_path: Path) -> None:
    write_image(tmp_path / "train/B/patient1/40X/a.tif", mode="I;16", fmt="TIFF")
    write_image(tmp_path / "train/M/b.jpg", mode="CMYK", fmt="JPEG")
    write_image(tmp_path / "train/M/c.png", mode="RGBA")
    (tmp_path / "train/M/notes.txt").write_text("ignored")
    dm = BCCDataModule(tmp_path, PRE, batch_size=4, num_workers=0)
    images, labels = next(iter(dm.loader("train")))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8  # normalised by the model
    assert sorted(labels.tolist()) == [0.0, 1.0, 1.0]


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist.*bcc-prepare raw=RAW.*experiment=demo"):
        scan_split(tmp_path / "nope", "train")


def test_missing_split_lists_what_was_found(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=1, splits=("train", "validation"))
    with pytest.raises(UserError, match=r"no 'val' folder \(found: train/, validation/\)"):
        scan_split(tmp_path, "val")


def test_empty_class(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=1, splits=("train",))
    for f in (tmp_path / "train/M").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="no malignant images"):
        scan_split(tmp_path, "train")


def test_unknown_class_folder(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=1, splits=("train",))
    (tmp_path / "train/uncertain").mkdir()
    with pytest.raises(UserError, match="uncertain/"):
        scan_split(tmp_path, "train")


def test_corrupt_image_gives_user_error(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=1, splits=("train",))
    (tmp_path / "train/B/broken.png").write_bytes(b"garbage")
    dm = BCCDataModule(tmp_path, PRE, batch_size=8, num_workers=0)
    with pytest.raises(UserError, match="broken.png"):
        next(iter(dm.loader("train")))


def test_batch_size_zero_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="batch_size"):
        BCCDataModule(tmp_path, PRE, batch_size=0)


def test_augmentation_only_on_train(tmp_path: Path) -> None:
    make_folder(tmp_path, per_class=2)
    dm = BCCDataModule(tmp_path, PRE, batch_size=4, num_workers=0,
                       augment=AugmentConfig(rot90=True, hflip=1.0, vflip=0.0))
    val_a = torch.stack([dm.dataset("val")[i][0] for i in range(4)])
    val_b = torch.stack([dm.dataset("val")[i][0] for i in range(4)])
    assert torch.equal(val_a, val_b)
    from bcc_lightning.data.preprocess import decode_resized

    reference = decode_resized(dm.dataset("train").samples[0][0], PRE)
    augmented = dm.dataset("train")[0][0]
    # Every augmented view is a flip/rotation of the same pixels: same values, other places.
    assert not torch.equal(augmented, reference)
    assert torch.equal(augmented.flatten().sort().values, reference.flatten().sort().values)


def test_free_rotation_keeps_size_and_fills_corners() -> None:
    image = torch.full((3, 20, 30), 200, dtype=torch.uint8)
    rotated = rotate_reflect(image, 30)
    assert rotated.shape == image.shape
    assert rotated.float().min() > 150  # corners reflected, not black


def test_cache_gives_the_same_batches_and_is_invalidated(tmp_path: Path) -> None:
    import os
    import pickle

    root = make_folder(tmp_path / "data", per_class=3)
    plain = BCCDataModule(root, PRE, batch_size=6, num_workers=0)
    cached = BCCDataModule(root, PRE, batch_size=6, num_workers=0, cache=tmp_path / "cache")
    for split in ("val", "test"):
        a = next(iter(plain.loader(split)))
        b = next(iter(cached.loader(split)))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    files = sorted((tmp_path / "cache").glob("val-32px-*.u8"))
    assert len(files) == 1
    dataset = cached.dataset("val")
    assert len(pickle.dumps(dataset)) < 5000  # workers get the path, not the pixels

    # Same files and size: reused. Changed file or size: a new cache.
    BCCDataModule(root, PRE, num_workers=0, cache=tmp_path / "cache").dataset("val")
    assert sorted((tmp_path / "cache").glob("val-32px-*.u8")) == files
    victim = next((root / "val" / "B").iterdir())
    write_image(victim, seed=999, size=(50, 20))
    os.utime(victim, ns=(1, 10**9))
    changed = BCCDataModule(root, PRE, num_workers=0, cache=tmp_path / "cache")
    assert len(sorted((tmp_path / "cache").glob("val-32px-*.u8"))) == 1  # built lazily: not yet
    a = next(iter(BCCDataModule(root, PRE, batch_size=6, num_workers=0).loader("val")))
    b = next(iter(changed.loader("val")))
    assert torch.equal(a[0], b[0])
    assert len(sorted((tmp_path / "cache").glob("val-32px-*.u8"))) == 2
    bigger = Preprocess(img_size=40, mean=PRE.mean, std=PRE.std)
    BCCDataModule(root, bigger, num_workers=0, cache=tmp_path / "cache").dataset("val")
    assert len(list((tmp_path / "cache").glob("val-40px-*.u8"))) == 1


def test_cache_with_workers(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", per_class=4)
    plain = BCCDataModule(root, PRE, batch_size=8, num_workers=0)
    cached = BCCDataModule(root, PRE, batch_size=8, num_workers=2, cache=tmp_path / "cache")
    assert torch.equal(next(iter(plain.loader("test")))[0], next(iter(cached.loader("test")))[0])


def test_augmentation_is_a_function_of_seed_epoch_and_position(tmp_path: Path) -> None:
    """Same (seed, epoch): identical batches with 0 or 2 workers; another epoch: other views."""
    make_folder(tmp_path, per_class=4)
    config = AugmentConfig(rot90=True, rotation_degrees=15, hflip=0.5, vflip=0.5, grayscale=0.3)

    def epoch_batches(workers: int, epoch: int) -> torch.Tensor:
        dm = BCCDataModule(tmp_path, PRE, batch_size=8, num_workers=workers, augment=config, seed=7)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([images for images, _ in loader])

    assert torch.equal(epoch_batches(0, 3), epoch_batches(2, 3))
    assert not torch.equal(epoch_batches(0, 3), epoch_batches(0, 4))


def _decode_noting_pid(path: Path, log: Path) -> np.ndarray:
    from bcc_lightning.data.preprocess import decode_hwc

    with log.open("a") as handle:
        handle.write(f"{os.getpid()}\n")
    return decode_hwc(path, PRE)


def test_cache_built_in_parallel_matches_and_reports_bad_files_cleanly(tmp_path: Path) -> None:
    from functools import partial

    from bcc_lightning.data.cache import open_or_build
    from bcc_lightning.data.preprocess import decode_hwc

    root = make_folder(tmp_path / "data", per_class=3)
    paths = [p for p, _ in scan_split(root, "train")]
    decode = partial(decode_hwc, pre=PRE)
    serial = open_or_build(tmp_path / "a", "train", paths, 32, "bilinear", decode)
    pids = tmp_path / "pids.txt"
    parallel = open_or_build(tmp_path / "b", "train", paths, 32, "bilinear", partial(_decode_noting_pid, log=pids),
                             workers=2)
    assert serial.path.read_bytes() == parallel.path.read_bytes()  # same rows, same order
    assert str(os.getpid()) not in pids.read_text().split()  # decoded in the workers, not here
    paths[1].write_bytes(b"not an image")
    with pytest.raises(UserError) as info:
        open_or_build(tmp_path / "c", "train", paths, 32, "bilinear", decode, workers=2)
    assert "Cannot read a training image" in str(info.value) and "Traceback" not in str(info.value)
    assert not list((tmp_path / "c").iterdir())  # nothing half-written is left


def test_auto_workers_follow_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from bcc_lightning.utils.device import resolve_num_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert resolve_num_workers("auto", gpu=False) == 4 and resolve_num_workers("auto", gpu=True) == 14
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert resolve_num_workers("auto", gpu=False) == 2 and resolve_num_workers("auto", gpu=True) == 1
    assert resolve_num_workers(3, gpu=True) == 3


def test_cache_auto_is_the_default_and_says_where(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import compose_config

    assert compose_config("train").data.cache == "auto"
    root = make_folder(tmp_path / "data", per_class=3)
    dm = BCCDataModule(root, PRE, batch_size=4, num_workers=0, cache="auto")
    with caplog.at_level("INFO", logger="bcc_lightning"):
        dm.dataset("train")
    assert dm.cache_dir is not None and dm.datasets["train"].cache is not None
    assert str(dm.cache_dir).startswith(os.environ["XDG_CACHE_HOME"])  # the user cache folder (the tests' own)
    assert "Decoded-image cache:" in caplog.text and "GiB for 18 images" in caplog.text


def test_cache_auto_streams_when_over_budget(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_folder(tmp_path / "data", per_class=3)
    dm = BCCDataModule(root, PRE, batch_size=4, num_workers=0, cache="auto", cache_budget_gb=1e-6)
    with caplog.at_level("WARNING", logger="bcc_lightning"):
        images, _ = next(iter(dm.loader("train")))
    assert dm.cache_dir is None and dm.datasets["train"].cache is None and images.dtype == torch.uint8
    assert "cache off" in caplog.text and "streaming" in caplog.text
