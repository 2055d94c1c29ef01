"""`bcc-bench` (`python -m bcc_lightning.tasks.bench`): where the time goes, from files to optimizer steps.

Rows: loader only (per worker count), model step only (the compute floor), the full `train.py` path through
Lightning, a plain PyTorch loop with the same model/data/settings, a naive fp32 loop, and inference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from bcc_lightning.data.augment import AugmentConfig
from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import generate_raw
from bcc_lightning.models.inference import predict_batches
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.training import assemble
from bcc_lightning.training.speed import bench_model, model_step_rate, sync_device, train_step_fn
from bcc_lightning.utils.atomic_io import write_json
from bcc_lightning.utils.config import check_config, run_dir, to_dict
from bcc_lightning.utils.device import pick_device, resolve_num_workers, resolve_precision
from bcc_lightning.utils.errors import UserError


def _rates(runs: dict[str, Callable[[], tuple[int, float]]], repeats: int) -> dict[str, list[float]]:
    """Images per second of each run, `repeats` times; each `run` returns (images, seconds). The runs take turns
    (A B A B ...), so a slow spell of a shared machine hits all of them alike and their ratios stay fair."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            images, seconds = run()
            rates[name].append(images / seconds)
    return rates


def _prepare_data(cfg: DictConfig, workdir: Path) -> Path:
    if cfg.data.root:
        return Path(cfg.data.root)
    per_class = max(2, int(cfg.n_images) // 2)
    for split, n in (("train", per_class), ("val", 4)):
        generate_raw(workdir / split, n_per_class=n, width=700, height=460, seed=1 if split == "train" else 2)
        for png in (workdir / split).rglob("*.png"):  # microscope exports are mostly JPEG
            from PIL import Image

            Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
            png.unlink()
    return workdir


def _cycle(loader: Any) -> Iterator[Any]:
    """Endless batches: a small folder is read again, as epochs do."""
    while True:
        yield from loader


def _batches(loader: Any, limit: int) -> Iterator[Any]:
    for index, batch in enumerate(loader):
        if index >= limit:
            return
        yield batch


def _proc_kb(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in lines if line.split(":", 1)[0] in keys)
    return {key: int(value.split()[0]) for key, value in fields.items()}


def _memory_mb(pid: int) -> dict[str, float]:
    """A process's peak RSS, and its current pages split into private ones (its own: what a copy per worker would
    show up in) and shared ones (libraries, pages inherited from the parent, the memory-mapped cache). From /proc
    (Linux); {} elsewhere."""
    status = _proc_kb(f"/proc/{pid}/status", ("VmHWM",))
    rollup = _proc_kb(f"/proc/{pid}/smaps_rollup", ("Private_Clean", "Private_Dirty", "Shared_Clean", "Shared_Dirty"))
    if not status or not rollup:
        return {}
    return {"peak_rss": status["VmHWM"] / 1024,
            "private": (rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)) / 1024,
            "shared": (rollup.get("Shared_Clean", 0) + rollup.get("Shared_Dirty", 0)) / 1024}


def loader_rate(dm: BCCDataModule, cfg: DictConfig,
                worker_memory: dict[int, dict[str, float]] | None = None) -> tuple[int, float]:
    """Images/s from files to batches; `worker_memory[num_workers]` gets the largest worker's memory afterwards."""
    loader = dm.train_dataloader()
    iterator = _cycle(loader)
    for _ in range(cfg.warmup):
        next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(cfg.steps):
        images += next(iterator)[0].shape[0]
    seconds = time.perf_counter() - start
    # The persistent workers of this loader (a private attribute of torch's DataLoader: read, never relied on).
    if worker_memory is not None:
        for process in getattr(getattr(loader, "_iterator", None), "_workers", None) or []:
            memory = _memory_mb(process.pid)
            if memory.get("peak_rss", 0) > worker_memory.get(dm.num_workers, {}).get("peak_rss", 0):
                worker_memory[dm.num_workers] = memory
    return images, seconds


def tensor_inference_rate(model: BCCClassifier, cfg: DictConfig, device: torch.device,
                          precision: Any) -> tuple[int, float]:
    """Inference images/s on uint8 tensors in memory (validation's compute floor)."""
    size = model.preprocess.img_size
    batch = torch.randint(0, 256, (cfg.data.batch_size, 3, size, size), dtype=torch.uint8, device=device)
    predict_batches(model, [batch] * cfg.warmup, device, precision)
    sync_device(device)
    start = time.perf_counter()
    predict_batches(model, [batch] * cfg.steps, device, precision)
    sync_device(device)
    return cfg.data.batch_size * cfg.steps, time.perf_counter() - start


def plain_loop_rate(model: BCCClassifier, dm: BCCDataModule, cfg: DictConfig, device: torch.device,
                    precision: Any) -> tuple[int, float]:
    step = train_step_fn(model, device, precision)
    iterator = _cycle(dm.train_dataloader())
    for _ in range(cfg.warmup):
        step(next(iterator))
    sync_device(device)
    start, images = time.perf_counter(), 0
    for _ in range(cfg.steps):
        batch = next(iterator)
        step(batch)
        images += batch[0].shape[0]
    sync_device(device)
    return images, time.perf_counter() - start


class _Timer(L.Callback):
    """Times the steps after `warmup`; the device is synchronised only at the two ends, as in the plain loop (a
    sync per step would stall a GPU's queue and understate Lightning)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.last, self.start, self.end, self.images, self.seen = warmup, warmup + steps, 0.0, 0.0, 0, 0

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, index: int) -> None:
        self.seen += 1  # across epochs: a small folder is read several times
        if self.seen > self.warmup:
            self.images += batch[0].shape[0]
        if self.seen == self.warmup:
            sync_device(module.device)
            self.start = time.perf_counter()
        elif self.seen == self.last:
            sync_device(module.device)
            self.end = time.perf_counter()


def lightning_rate(model: BCCClassifier, dm: BCCDataModule, cfg: DictConfig, device: torch.device,
                   precision: Any) -> tuple[int, float]:
    """The same path as train.py: BCCDataModule + BCCClassifier through lightning.Trainer.fit."""
    timer = _Timer(cfg.warmup, cfg.steps)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
                        max_epochs=-1, max_steps=cfg.warmup + cfg.steps, limit_val_batches=0,
                        num_sanity_val_steps=0, benchmark=device.type == "cuda", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer])
    trainer.fit(model, datamodule=dm)
    return timer.images, timer.end - timer.start


def inference_rate(model: BCCClassifier, dm: BCCDataModule, cfg: DictConfig, device: torch.device,
                   precision: Any) -> tuple[int, float]:
    batches = list(_batches(_cycle(dm.loader("train")), cfg.warmup + cfg.steps))
    predict_batches(model, [b[0] for b in batches[: cfg.warmup]], device, precision)
    sync_device(device)
    start = time.perf_counter()
    predict_batches(model, [b[0] for b in batches[cfg.warmup:]], device, precision)
    sync_device(device)
    return sum(b[0].shape[0] for b in batches[cfg.warmup:]), time.perf_counter() - start


MODEL_STEP = "model step only (tensors in memory)"
FULL = "full train.py path (Lightning)"
PLAIN = "plain PyTorch loop, same settings"
NAIVE = "naive loop (fp32, channels-first)"
INFERENCE = "inference (eval.py / predict)"


def _result(cfg: DictConfig, samples: dict[str, list[float]], worker_memory: dict[int, dict[str, float]],
            workers: int, device: torch.device, precision: Any, img_size: int) -> dict[str, Any]:
    """Medians, the ratios that matter, memory and the settings, as bench.json holds them."""
    rates = {name: statistics.median(values) for name, values in samples.items()}
    default_loader = next(v for k, v in rates.items() if k.startswith(f"loader only, {workers} workers"))
    ratios = {"full / model step": rates[FULL] / rates[MODEL_STEP], "full / plain loop": rates[FULL] / rates[PLAIN],
              "loader (default workers) / model step": default_loader / rates[MODEL_STEP]}
    if cfg.naive:
        ratios["full / naive fp32 loop"] = rates[FULL] / rates[NAIVE]
    worker = worker_memory.get(workers) or max(worker_memory.values(), key=lambda m: m.get("peak_rss", 0), default={})
    memory = {"peak_rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "largest_loader_worker_mb": worker}
    threads = torch.get_num_threads()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)"
    result = {"device": device_name, "model": cfg.model.name, "img_size": img_size,
              "batch_size": cfg.data.batch_size, "optimizer": to_dict(cfg.optimizer), "precision": str(precision),
              "channels_last": bool(cfg.model.channels_last), "compile": bool(cfg.compile), "workers": workers,
              "images_per_s": rates, "ratios": ratios, "memory": memory, "torch": torch.__version__,
              "repeats": samples, "steps": int(cfg.steps), "warmup": int(cfg.warmup)}
    return result


def run(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)  # warmup, steps and repeats >= 1: the first batches pay for start-up and are never timed
    if cfg.mode == "epochs":
        return run_epochs(cfg)
    if cfg.mode != "steps":
        raise UserError(f"mode must be steps (images/s per stage) or epochs (seconds per epoch); got {cfg.mode!r}.")
    device = pick_device(str(cfg.trainer.accelerator))
    precision = resolve_precision(cfg.trainer.precision, "gpu" if device.type == "cuda" else "cpu")
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True  # as train.py's default (trainer.benchmark), for every row alike
    workers = resolve_num_workers(cfg.data.num_workers, gpu)
    with tempfile.TemporaryDirectory(prefix="bcc_bench_") as tmp:
        root = _prepare_data(cfg, Path(tmp))
        model = bench_model(cfg, bool(cfg.model.channels_last))
        if cfg.compile:
            model.backbone = torch.compile(model.backbone)

        def datamodule(num_workers: int) -> BCCDataModule:
            return BCCDataModule(root, model.preprocess, batch_size=cfg.data.batch_size, num_workers=num_workers,
                                 augment=AugmentConfig(), cache=cfg.data.cache, gpu=gpu)

        build: dict[str, list[float]] = {}
        if cfg.data.cache:  # built here once (timed, when new), so no loader row pays for it
            probe = datamodule(workers)
            cache_dir = probe.resolve_cache()
            before = set(cache_dir.glob("train-*.u8")) if cache_dir else set()
            start = time.perf_counter()
            count = len(probe.dataset("train"))
            if cache_dir and set(cache_dir.glob("train-*.u8")) != before:
                build[f"cache build (decode + resize, {workers} workers)"] = [count / (time.perf_counter() - start)]
        loader_workers = list(dict.fromkeys([*cfg.loader_workers, workers]))
        worker_memory: dict[int, dict[str, float]] = {}
        runs: dict[str, Callable[[], tuple[int, float]]] = {
            f"loader only, {w} workers{' (default)' if w == workers else ''}":
                (lambda w=w: loader_rate(datamodule(w), cfg, worker_memory)) for w in loader_workers}
        dm = datamodule(workers)
        runs[MODEL_STEP] = lambda: model_step_rate(model, cfg, device, precision)
        runs[FULL] = lambda: lightning_rate(model, dm, cfg, device, precision)
        runs[PLAIN] = lambda: plain_loop_rate(model, dm, cfg, device, precision)
        if cfg.naive:
            naive = bench_model(cfg, channels_last=False)
            runs[NAIVE] = lambda: plain_loop_rate(naive, dm, cfg, device, "32-true")
        runs[INFERENCE] = lambda: inference_rate(model, dm, cfg, device, precision)
        samples = {**build, **_rates(runs, int(cfg.repeats))}
    result = _result(cfg, samples, worker_memory, workers, device, precision, model.preprocess.img_size)
    print(format_table(result))
    write_json(run_dir() / "bench.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['model']} {result['img_size']}px, batch {result['batch_size']}, {result['precision']}, "
             f"channels_last={result['channels_last']}, {result['workers']} workers, on {result['device']}",
             f"| {'measurement':<44} | {'img/s':>9} | {'min - max':>19} |", f"|{'-' * 46}|{'-' * 11}|{'-' * 21}|"]
    spread = result.get("repeats", {})
    for name, value in result["images_per_s"].items():
        low_high = f"{min(spread[name]):.1f} - {max(spread[name]):.1f}" if spread.get(name) else ""
        lines.append(f"| {name:<44} | {value:>9.1f} | {low_high:>19} |")
    lines += [f"| {name:<44} | {value:>8.2f}x | {'':>19} |" for name, value in result["ratios"].items()]
    m = result["memory"]
    line = f"peak RSS: main process {m['peak_rss_main_mb']:.0f} MB"
    worker = m.get("largest_loader_worker_mb") or {}
    if worker:
        line += (f"; largest loader worker {worker['peak_rss']:.0f} MB peak RSS, at the end {worker['private']:.0f} MB "
                 f"private + {worker['shared']:.0f} MB shared with other processes (libraries, pages inherited from "
                 f"the parent, the memory-mapped cache)")
    lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import bench as _main

    with contextlib.suppress(KeyboardInterrupt):
        _main()


# ------------------------------------------------------------------------------------------------ epochs mode
# Seconds per epoch (training plus validation, as the original's model.fit(validation_data=...)) of train.py's own
# path (its config, data module, callbacks, logger and checkpoints) next to hand-written loops, in one run.


class _EpochClock(L.Callback):
    """Wall time of each epoch, training start to the next epoch's start (validation and checkpoints included)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: Any) -> None:
        sync_device(module.device)
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        sync_device(module.device)
        self.marks.append(time.perf_counter())

    @property
    def epochs(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def _train_config(cfg: DictConfig, root: Path, cache: Any, epochs: int, workers: Any = None) -> DictConfig:
    """train.yaml as `python train.py` composes it, with bench's model, optimizer and data settings."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    overrides = [f"data.root={root}", f"trainer.max_epochs={epochs}", "callbacks.progress_bar=none",
                 "trainer.enable_model_summary=false", f"trainer.accelerator={cfg.trainer.accelerator}",
                 f"trainer.precision={cfg.trainer.precision}", "logger=tensorboard"]
    if GlobalHydra.instance().is_initialized():
        train_cfg = compose("train", overrides=overrides)
    else:
        from bcc_lightning.utils.config import config_dir

        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            train_cfg = compose("train", overrides=overrides)
    with open_dict(train_cfg):
        train_cfg.model = cfg.model
        train_cfg.model.pretrained = False
        train_cfg.optimizer = cfg.optimizer
        train_cfg.data.batch_size = cfg.data.batch_size
        train_cfg.data.num_workers = cfg.data.num_workers if workers is None else workers
        train_cfg.data.cache = cache
        train_cfg.data.audit = "off"  # the audit runs before training; it is not part of an epoch
    return train_cfg


def train_py_epochs(cfg: DictConfig, root: Path, cache: Any, outdir: Path, workers: Any = None) -> list[float]:
    """Seconds per epoch of train.py's fit (everything but the final test report)."""
    train_cfg = _train_config(cfg, root, cache, int(cfg.epochs), workers)
    L.seed_everything(0)
    model, datamodule, _ = assemble.build(train_cfg, outdir)
    callbacks, _ = assemble.build_callbacks(train_cfg, outdir)
    clock = _EpochClock()
    trainer = assemble.build_trainer(train_cfg, [*callbacks, clock], assemble.build_loggers(train_cfg, outdir),
                                       outdir)
    trainer.fit(model, datamodule=datamodule)
    return clock.epochs


def plain_loop_epochs(cfg: DictConfig, root: Path, channels_last: bool, precision: Any, workers: int,
                      device: torch.device) -> list[float]:
    """A hand-written loop over the same data: train, then validate, per epoch (no logging, no checkpoints)."""
    model = bench_model(cfg, channels_last)
    dm = BCCDataModule(root, model.preprocess, batch_size=cfg.data.batch_size, num_workers=workers,
                       augment=AugmentConfig(), gpu=device.type == "cuda")
    step = train_step_fn(model, device, precision)
    times = []
    for epoch in range(int(cfg.epochs)):
        sync_device(device)
        start = time.perf_counter()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        model.train()
        for batch in loader:
            step(batch)
        predict_batches(model, (images for images, _ in dm.val_dataloader()), device, precision)
        sync_device(device)
        times.append(time.perf_counter() - start)
    return times


class _RandomRot90:
    """The rot90 of our augmentation, for a PIL image (picklable, for loader workers)."""

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        k = random.randrange(4)
        turns = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
        return image if k == 0 else image.transpose(turns[k])


def handwritten_loop_epochs(cfg: DictConfig, root: Path, precision: Any, workers: int,
                            device: torch.device) -> list[float]:
    """The peer a PyTorch user writes by hand, tuned: torchvision's ImageFolder and transforms (Pillow decode and
    resize every epoch, the tutorial pipeline), our augmentation (rot90 + flips), channels-last, `precision`,
    `workers` persistent workers; train, then validate, per epoch."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    model = bench_model(cfg, channels_last=True)
    pre = model.preprocess
    tail = [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    size = (pre.img_size, pre.img_size)
    train_tf = T.Compose([T.Resize(size), T.RandomHorizontalFlip(), T.RandomVerticalFlip(), _RandomRot90(), *tail])

    def loader(split: str, transform: Any, shuffle: bool) -> DataLoader:
        return DataLoader(datasets.ImageFolder(str(root / split), transform=transform),
                          batch_size=cfg.data.batch_size, shuffle=shuffle, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    train, val = loader("train", train_tf, True), loader("val", T.Compose([T.Resize(size), *tail]), False)
    step = train_step_fn(model, device, precision)
    times = []
    for _ in range(int(cfg.epochs)):
        sync_device(device)
        start = time.perf_counter()
        model.train()
        for images, labels in train:
            step((images, labels.float()))
        predict_batches(model, (images for images, _ in val), device, precision)
        sync_device(device)
        times.append(time.perf_counter() - start)
    return times


KERAS_PEER = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_keras.py"


def keras_peer() -> ModuleType:
    """benchmarks/bench_keras.py, loaded from its path for its recipe table. It is a script that keras_python runs,
    not part of the package (a task imports no other task, and the wheel ships no peer scripts); loading it is safe,
    since it imports TensorFlow only when it runs."""
    if not KERAS_PEER.is_file():
        raise UserError(f"The Keras peer script {KERAS_PEER} is not here: it lives in the source checkout's "
                        "benchmarks/ folder, which an installed wheel does not carry. Run bcc-bench with "
                        "keras_python= from a clone of the repository (pip install -e .), or leave keras_python=null.")
    spec = importlib.util.spec_from_file_location("bcc_bench_keras_peer", KERAS_PEER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_keras_settings(cfg: DictConfig) -> None:
    """Refuses, before anything runs, a Keras comparison that could not be run or would not compare like with
    like (the Keras script trains each backbone at the original's input size)."""
    peer = keras_peer()
    recipes, loaders = peer.RECIPES, peer.LOADERS

    if cfg.model.name not in recipes:
        raise UserError(f"The Keras peer knows the original's backbones {', '.join(recipes)}; got "
                        f"model={cfg.model.name}. Run the comparison with one of them, or leave keras_python=null.")
    size = recipes[cfg.model.name][1]
    if cfg.model.img_size not in (None, size):
        raise UserError(f"The Keras peer trains {cfg.model.name} at the original's {size} px, but model.img_size="
                        f"{cfg.model.img_size}: the rows would not compare. Leave model.img_size at {size}.")
    unknown = [loader for loader in cfg.keras_loaders if loader not in loaders]
    if unknown:
        raise UserError(f"keras_loaders may hold {' and '.join(loaders)}; got {unknown}.")


def keras_epochs(cfg: DictConfig, root: Path, loader: str, out: Path) -> list[float]:
    """The original recipe in Keras, run by `cfg.keras_python` (a Python with TensorFlow) on the same folder."""
    import subprocess
    import sys

    check_keras_settings(cfg)
    command = [str(cfg.keras_python), str(KERAS_PEER), "--root", str(root), "--epochs", str(int(cfg.epochs)),
               "--batch-size", str(int(cfg.data.batch_size)), "--model", str(cfg.model.name), "--loader", loader,
               "--json", str(out)]
    timeout = float(cfg.keras_timeout_s or 0) or None
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise UserError(f"The Keras peer ran past keras_timeout_s={cfg.keras_timeout_s} s and was stopped. Raise "
                        "keras_timeout_s (null: no limit), or train fewer images (n_images=).") from error
    except OSError as error:
        raise UserError(f"keras_python={cfg.keras_python} could not be started ({error}). Point it at a Python "
                        "that has TensorFlow (e.g. a venv with `pip install tensorflow-cpu`), or leave it null.") \
            from error
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        hint = ("it refused its input (see above)" if done.returncode == 2 else
                f"check that {cfg.keras_python} has TensorFlow: `{cfg.keras_python} -c 'import tensorflow'`")
        raise UserError(f"The Keras peer failed (exit code {done.returncode}; its last output is above): {hint}.")
    return [float(t) for t in json.loads(out.read_text())["seconds_per_epoch"]]


HAND_LOOP = "hand-written torchvision loop"
DATAMODULE_LOOP = "plain loop over bcc's data module"


def run_epochs(cfg: DictConfig) -> dict[str, Any]:
    """Each system trains `epochs` epochs per round; later rounds run the systems in reverse order, so that a drift
    of a shared machine's speed over the run weighs on all of them alike."""
    device = pick_device(str(cfg.trainer.accelerator))
    precision = resolve_precision(cfg.trainer.precision, "gpu" if device.type == "cuda" else "cpu")
    workers = resolve_num_workers(cfg.data.num_workers, device.type == "cuda")
    rounds = int(cfg.epoch_rounds)
    if rounds < 1:
        raise UserError(f"epoch_rounds must be 1 or more; got {rounds}.")
    if cfg.keras_python:
        check_keras_settings(cfg)
    runs: dict[str, list[list[float]]] = {}
    floors: list[tuple[float, float]] = []
    peer_versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bcc_bench_epochs_") as tmp:
        root = _prepare_epoch_data(cfg, Path(tmp) / "data")
        # Each system takes the round's index (train.py writes each round's run to a folder of its own).
        systems: dict[str, Callable[[int], list[float]]] = {
            "train.py, default settings (data.cache=auto: a fresh cache)":
                lambda r: train_py_epochs(cfg, root, str(Path(tmp) / "cache"), Path(tmp) / f"run_cached_{r}"),
            "train.py, data.cache=null (streaming)":
                lambda r: train_py_epochs(cfg, root, None, Path(tmp) / f"run_stream_{r}")}
        for w in cfg.epoch_workers or []:  # the worker-count sweep behind data.num_workers=auto
            for label, cache in (("auto", str(Path(tmp) / "cache")), ("null", None)):
                systems[f"train.py, data.cache={label}, data.num_workers={w}"] = (
                    lambda r, c=cache, w=w, label=label: train_py_epochs(
                        cfg, root, c, Path(tmp) / f"run_{label}_{w}_{r}", workers=w))
        # The peers: the tuned hand loop (bf16, channels-last, where bf16 runs) and the same at this run's
        # precision; "vs hand loop" divides by the faster of the two.
        bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported()
        for peer_precision in dict.fromkeys([*(["bf16-mixed"] if bf16 else []), str(precision)]):
            systems[f"{HAND_LOOP} (ImageFolder, Pillow; {peer_precision}, channels-last, {workers} workers)"] = (
                lambda r, p=peer_precision: handwritten_loop_epochs(cfg, root, p, workers, device))
        # Lightning's own cost: the same loop over train.py's data module (cache off: decoded every epoch).
        systems[f"{DATAMODULE_LOOP} (streaming; {precision}, channels-last, {workers} workers)"] = (
            lambda r: plain_loop_epochs(cfg, root, True, precision, workers, device))
        if cfg.naive:
            systems["plain loop, fp32, channels-first, 0 workers"] = (
                lambda r: plain_loop_epochs(cfg, root, False, "32-true", 0, device))
        for loader in (cfg.keras_loaders if cfg.keras_python else []):
            systems[f"the original recipe in Keras ({loader} loader, fp32)"] = (
                lambda r, loader=loader: keras_epochs(cfg, root, loader, Path(tmp) / f"keras_{loader}_{r}.json"))

        def floor() -> None:
            model = bench_model(cfg, bool(cfg.model.channels_last))
            step = statistics.median(n / s for n, s in (model_step_rate(model, cfg, device, precision)
                                                        for _ in range(int(cfg.repeats))))
            val = statistics.median(n / s for n, s in (tensor_inference_rate(model, cfg, device, precision)
                                                       for _ in range(int(cfg.repeats))))
            floors.append((int(cfg.n_images) / step, int(cfg.epoch_val_images) / val))

        order: list[Any] = [*systems, floor]
        for index in range(rounds):
            for item in order if index % 2 == 0 else reversed(order):
                if callable(item):
                    item()
                else:
                    runs.setdefault(item, []).append(systems[item](index))
        for path in Path(tmp).glob("keras_*.json"):
            peer_versions = {k: str(v) for k, v in json.loads(path.read_text()).items() if k in ("tensorflow", "keras")}
    n_train, n_val = int(cfg.n_images), int(cfg.epoch_val_images)
    result = {"mode": "epochs", "device": _device_name(device), "model": cfg.model.name, "precision": str(precision),
              "batch_size": cfg.data.batch_size, "workers": workers, "train_images": n_train, "val_images": n_val,
              "epochs": int(cfg.epochs), "rounds": rounds, "runs": runs,
              "seconds_per_epoch": {name: r[0] for name, r in runs.items()},
              # steady state: every epoch but each run's first, over all rounds
              "steady_state": {name: statistics.median([t for run in r for t in (run[1:] or run)])
                               for name, r in runs.items()},
              "model_step_floor_s": statistics.median(f[0] for f in floors),
              "validation_floor_s": statistics.median(f[1] for f in floors),
              "floors_per_round": floors, "torch": torch.__version__, **peer_versions}
    print(format_epoch_table(result))
    write_json(run_dir() / "bench_epochs.json", result)
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _prepare_epoch_data(cfg: DictConfig, root: Path) -> Path:
    """train/val/test JPEGs at microscope size (700x460): n_images to train on, epoch_val_images to validate."""
    from PIL import Image

    counts = {"train": int(cfg.n_images) // 2, "val": int(cfg.epoch_val_images) // 2, "test": 2}
    for index, (split, per_class) in enumerate(counts.items()):
        generate_raw(root / split, n_per_class=max(1, per_class), width=700, height=460, seed=10 + index)
        for png in (root / split).rglob("*.png"):
            Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
            png.unlink()
        (root / split / "README.txt").unlink(missing_ok=True)
    return root


def _reference(steady: dict[str, float], *prefixes: str) -> float | None:
    """The fastest row whose name starts with one of `prefixes` (None when there is none)."""
    times = [v for k, v in steady.items() if k.startswith(prefixes)]
    return min(times) if times else None


def format_epoch_table(result: dict[str, Any]) -> str:
    """The per-epoch table. "vs hand loop" divides by the fastest hand-written torchvision loop (in older results,
    the "tuned plain loop" over our data module); "vs Keras" by the fastest Keras row, when Keras ran."""
    steady = result["steady_state"]
    floor = result["model_step_floor_s"] + result.get("validation_floor_s", 0.0)
    tuned = _reference(steady, HAND_LOOP, "tuned plain loop")
    keras = _reference(steady, "the original recipe in Keras")
    lines = [f"{result['model']}, batch {result['batch_size']}, {result['precision']}, {result['workers']} workers, "
             f"{result['train_images']} training + {result['val_images']} validation images per epoch, on "
             f"{result['device']}",
             f"| {'system':<80} | {'s/epoch':>8} | {'first epoch':>11} | {'vs hand loop':>12} | {'vs Keras':>8} | "
             f"{'vs floor':>8} |",
             f"|{'-' * 82}|{'-' * 10}|{'-' * 13}|{'-' * 14}|{'-' * 10}|{'-' * 10}|"]

    def row(name: str, seconds: float, first: str) -> str:
        versus = [f"{seconds / ref:>.2f}x" if ref else "-" for ref in (tuned, keras, floor)]
        return (f"| {name:<80} | {seconds:>8.1f} | {first:>11} | {versus[0]:>12} | {versus[1]:>8} | "
                f"{versus[2]:>8} |")

    for name, seconds in steady.items():
        lines.append(row(name, seconds, f"{result['seconds_per_epoch'][name][0]:.1f}"))
    lines.append(row("model-step floor, training images only (tensors in memory)", result["model_step_floor_s"], ""))
    if "validation_floor_s" in result:
        lines.append(row("floor: the above + inference on the validation images", floor, ""))
    lines.append("s/epoch: median of the epochs after the first (steady state); the first includes start-up and, for "
                 "the cached row, building the cache. vs hand loop / vs Keras: against the fastest such row.")
    return "\n".join(lines)
