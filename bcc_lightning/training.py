"""`train.py`: build data, model, callbacks, loggers and trainer from the config; fit; test the best checkpoint."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from omegaconf import DictConfig

from bcc_lightning.data.augment import AugmentConfig
from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import generate, is_demo_root
from bcc_lightning.errors import UserError
from bcc_lightning.evaluation import evaluate, predict_split_csv
from bcc_lightning.history import History
from bcc_lightning.inference import pick_device
from bcc_lightning.models.module import BCCClassifier, load_checkpoint, read_checkpoint
from bcc_lightning.reliability import AtomicCheckpointIO, EpochSeeder
from bcc_lightning.reports.report import write_metrics_json
from bcc_lightning.runtime import log, resolve_precision, run_dir, to_dict


def progress_bar_kind(setting: Any) -> str:
    """`auto`: a rich bar in a terminal; none when output goes to a log file or CI, where bars are noise."""
    if setting in (None, False, "none"):
        return "none"
    if setting == "auto":
        return "rich" if sys.stdout.isatty() else "none"
    return str(setting)


def build_callbacks(cfg: DictConfig, outdir: Path) -> tuple[list[Callback], ModelCheckpoint]:
    cb = cfg.callbacks
    checkpoint = ModelCheckpoint(
        dirpath=outdir / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
        monitor=cb.model_checkpoint.monitor, mode=cb.model_checkpoint.mode, save_top_k=1, save_last=True,
    )
    callbacks: list[Callback] = [checkpoint, History(outdir / "history.csv"), EpochSeeder(int(cfg.seed))]
    if cb.early_stopping.enabled:
        callbacks.append(EarlyStopping(monitor=cb.early_stopping.monitor, mode=cb.early_stopping.mode,
                                       patience=int(cb.early_stopping.patience),
                                       min_delta=float(cb.early_stopping.min_delta)))
    if cb.lr_monitor and cfg.logger:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    bar = progress_bar_kind(cb.progress_bar)
    if bar == "rich":
        callbacks.append(RichProgressBar())
    elif bar == "tqdm":
        callbacks.append(TQDMProgressBar())
    return callbacks, checkpoint


def build_loggers(cfg: DictConfig, outdir: Path) -> list[Logger]:
    loggers: list[Logger] = []
    for key, spec in (cfg.logger or {}).items():
        if spec is None:
            continue
        if key == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(outdir), name="tensorboard", version="",
                                             default_hp_metric=False))
        elif key == "csv":
            loggers.append(CSVLogger(save_dir=str(outdir), name="csv", version=""))
        else:
            raise UserError(f"Unknown logger '{key}'; use logger=tensorboard, logger=csv, logger=all or logger=none.")
    return loggers


def build_trainer(cfg: DictConfig, outdir: Path, callbacks: list[Callback], loggers: list[Logger] | bool) -> L.Trainer:
    options = to_dict(cfg.trainer)
    options["precision"] = resolve_precision(options.get("precision", "auto"), str(options.get("accelerator", "auto")))
    if options.get("benchmark") is None:  # every batch has the same shape: let cuDNN pick its fastest kernels once
        options["benchmark"] = not options.get("deterministic")
    if progress_bar_kind(cfg.callbacks.progress_bar) == "none":
        options["enable_progress_bar"] = False
    plugins = [AtomicCheckpointIO()]
    try:
        return L.Trainer(**options, callbacks=callbacks, logger=loggers, default_root_dir=str(outdir),
                         plugins=plugins)
    except (TypeError, ValueError) as exc:
        raise UserError(f"Bad trainer option: {exc}. trainer.* keys are passed to lightning.Trainer.") from exc


def prepare_data_root(cfg: DictConfig) -> Path:
    root = Path(cfg.data.root).expanduser()
    demo = cfg.data.get("demo")
    if demo and demo.generate and not is_demo_root(root):
        log.info("Generating the synthetic demo dataset in %s", root)
        generate(root, n_per_class=int(demo.n_per_class), size=int(demo.size), seed=int(demo.seed))
    return root.resolve()


def build_datamodule(data_cfg: Any, root: Path, model: BCCClassifier | None, seed: int = 0,
                     accelerator: str = "auto") -> BCCDataModule:
    """The data module of `data_cfg`; with model=None its preprocessing is set once the model exists."""
    augment = AugmentConfig(**to_dict(data_cfg.augment)) if data_cfg.get("augment") is not None else None
    preprocess = model.preprocess if model is not None else None
    return BCCDataModule(root, preprocess, batch_size=data_cfg.batch_size, num_workers=data_cfg.num_workers,
                         augment=augment, balanced_sampler=bool(data_cfg.get("balanced_sampler", False)),
                         seed=int(seed), cache=data_cfg.get("cache"), fold=data_cfg.get("fold"),
                         gpu=pick_device(accelerator).type == "cuda")


def _pos_weight(setting: Any, datamodule: BCCDataModule) -> float | None:
    if setting in (None, "none"):
        return None
    if setting == "auto":
        benign, malignant = datamodule.class_counts("train")
        return benign / malignant
    return float(setting)


def resume_path(cfg: DictConfig, outdir: Path) -> str | None:
    """`ckpt_path=PATH`, or `resume=true`: this run directory's last.ckpt. Checked before any work starts."""
    path = cfg.get("ckpt_path")
    if cfg.get("resume") and not path:
        path = outdir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise UserError(f"resume=true but {path} does not exist. Pass the interrupted run's directory with "
                            f"hydra.run.dir=<run dir>, or a checkpoint with ckpt_path=PATH.")
    if path:
        read_checkpoint(path)  # a truncated or foreign file fails here, with a clear message
        log.info("Resuming from %s", path)
    return str(path) if path else None


def validate_config(cfg: DictConfig) -> None:
    """Mistakes that would otherwise surface minutes into a run."""
    if cfg.trainer.get("max_epochs") is not None and int(cfg.trainer.max_epochs) < 1:
        raise UserError(f"trainer.max_epochs must be at least 1 (got {cfg.trainer.max_epochs}).")
    for key in ("hflip", "vflip", "grayscale"):
        value = float(cfg.data.augment.get(key, 0))
        if not 0 <= value <= 1:
            raise UserError(f"data.augment.{key} is a probability in [0, 1] (got {value}).")
    unfreeze = cfg.model.get("unfreeze_at_epoch")
    if unfreeze is not None and not cfg.model.get("freeze_backbone"):
        raise UserError("model.unfreeze_at_epoch needs model.freeze_backbone=true (nothing is frozen to unfreeze).")


def run(cfg: DictConfig) -> float | None:
    """Train, test the best checkpoint, write metrics.json; return the best monitored value for sweepers."""
    outdir = run_dir()
    validate_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    root = prepare_data_root(cfg)
    synthetic = is_demo_root(root)
    data_info = {"root": str(root), "synthetic_data": synthetic, "classes": ["benign", "malignant"],
                 "fold": cfg.data.get("fold")}

    model_cfg, optim_cfg = to_dict(cfg.model), to_dict(cfg.optimizer)
    scheduler_cfg = to_dict(cfg.get("scheduler"))
    # Scan the data first (a bad layout fails before any weights load), then build the model with pos_weight known.
    datamodule = build_datamodule(cfg.data, root, None, int(cfg.seed), str(cfg.trainer.accelerator))
    for split in ("train", "val", "test"):
        datamodule.samples(split)
    pos_weight = _pos_weight(cfg.model.get("pos_weight"), datamodule)
    model = BCCClassifier(model_cfg, optim_cfg, scheduler_cfg, pos_weight=pos_weight, data_info=data_info)
    datamodule.preprocess = model.preprocess

    callbacks, checkpoint = build_callbacks(cfg, outdir)
    loggers = build_loggers(cfg, outdir)
    trainer = build_trainer(cfg, outdir, callbacks, loggers or False)
    counts = {s: datamodule.class_counts(s) for s in ("train", "val", "test")}
    log.info("Data %s%s: %s (benign, malignant)", root, " [SYNTHETIC DEMO DATA]" if synthetic else "", counts)
    log.info("Backbone %s at %d px, precision %s, run directory %s", model_cfg["name"],
             model.preprocess.img_size, trainer.precision, outdir)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and synthetic:
            logger.experiment.add_text("note", "SYNTHETIC DEMO DATA: not real microscopy images.")

    # torch.compile: worth it on GPUs for long runs; checkpoints keep the plain module's parameter names.
    fit_model = torch.compile(model) if cfg.get("compile") else model
    trainer.fit(fit_model, datamodule=datamodule, ckpt_path=resume_path(cfg, outdir))

    best_path = checkpoint.best_model_path or checkpoint.last_model_path
    # fast_dev_run writes no best checkpoint: the weights in memory are evaluated then.
    tested = load_checkpoint(best_path) if best_path else model.eval()
    best = checkpoint.best_model_score
    best_value = float(best) if best is not None else None
    writer = next((lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
    result = evaluate(tested, Path(best_path) if best_path else outdir / "checkpoints" / "none.ckpt", root,
                      outdir / "test", split="test", report=cfg.report, batch_size=cfg.data.batch_size,
                      num_workers=cfg.data.num_workers, accelerator=str(cfg.trainer.accelerator),
                      precision=trainer.precision, tensorboard=writer, fold=cfg.data.get("fold"),
                      datamodule=datamodule)
    if cfg.data.get("fold") is not None:  # out-of-fold predictions for bcc_lightning.aggregate
        predict_split_csv(tested, datamodule, "val", outdir / "val_predictions.csv",
                          accelerator=str(cfg.trainer.accelerator), precision=trainer.precision)
    for lg in loggers:
        lg.log_metrics({f"test/{k}": v for k, v in result["metrics"].items()
                        if isinstance(v, float) and math.isfinite(v)}, step=trainer.global_step)
    result.update({"monitor": checkpoint.monitor, "best_monitor_value": best_value,
                   "epochs_trained": trainer.current_epoch, "run_dir": str(outdir),
                   "checkpoint": best_path or None})
    write_metrics_json(outdir, result)
    m = result["metrics"]
    print(f"\nRun directory: {outdir}")
    print(f"Best checkpoint: {best_path or '(none written: fast_dev_run)'}")
    print(f"Test ({m['n']} images{', SYNTHETIC DEMO DATA' if synthetic else ''}): accuracy {m['accuracy']:.4f}, "
          f"sensitivity {m['recall']:.4f}, specificity {m['specificity']:.4f}, AUROC {m['auroc'] or float('nan'):.4f}")
    if best_value is None or not math.isfinite(best_value):
        return None
    return best_value
