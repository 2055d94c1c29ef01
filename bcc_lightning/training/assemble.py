"""Assembling a training run from its config: the data module and model, callbacks, loggers and the Lightning
trainer, the leakage audit, and testing the best checkpoint with the full report. The train and probe tasks, and
bcc-bench's `train.py` rows, compose these; a wing above data, models, callbacks and reports, below the tasks."""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from bcc_lightning.callbacks.history import History
from bcc_lightning.callbacks.seeding import EpochSeeder
from bcc_lightning.data.audit import audit_gate, audit_workers
from bcc_lightning.data.augment import AugmentConfig
from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.demo import generate, is_demo_root
from bcc_lightning.data.groups import with_group_overlap
from bcc_lightning.data.layout import SPLITS, fold_samples, scan_split
from bcc_lightning.data.preprocess import Preprocess, with_stain_norm
from bcc_lightning.models.backbones import resolve_preprocess
from bcc_lightning.models.checkpoint import AtomicCheckpointIO, load_checkpoint, read_checkpoint
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.reports.card import write_card
from bcc_lightning.reports.evaluation import EvalSettings, evaluate, predict_split_csv
from bcc_lightning.reports.report import write_metrics_json
from bcc_lightning.utils.config import check_config, log, to_dict
from bcc_lightning.utils.device import check_accelerator, pick_device, resolve_precision
from bcc_lightning.utils.errors import UserError


def progress_bar_kind(setting: Any) -> str:
    """`auto`: a rich bar in a terminal; none when output goes to a log file or CI, where bars are noise."""
    if setting in (None, False, "none"):
        return "none"
    if setting == "auto":
        return "rich" if sys.stdout.isatty() else "none"
    return str(setting)


def _instantiate(name: str, spec: Any, defaults: dict[str, Any]) -> Any:
    """One `_target_` config; `defaults` fill keys the config leaves null (paths inside the run directory)."""
    if not isinstance(spec, DictConfig) or "_target_" not in spec:
        raise UserError(f"{name} must be a config with a _target_ (a class path such as "
                        f"lightning.pytorch.callbacks.EarlyStopping), or null to leave it out; got {spec!r}.")
    options = {k: v for k, v in to_dict(spec).items() if k != "_target_"}
    for key, value in defaults.items():
        if options.get(key, ...) is None:
            options[key] = value
    try:
        return hydra.utils.instantiate(OmegaConf.create({"_target_": spec._target_}), **options)
    except Exception as exc:
        cause = exc.__cause__ or exc  # Hydra wraps the real error in "Error in call to target ..."
        raise UserError(f"Cannot build {name} ({spec._target_}): {type(cause).__name__}: "
                        f"{str(cause).splitlines()[0][:300]}") from exc


def build_callbacks(cfg: DictConfig, outdir: Path) -> tuple[list[Callback], ModelCheckpoint]:
    callbacks: list[Callback] = [History(outdir / "history.csv"), EpochSeeder(int(cfg.seed))]
    for name, spec in cfg.callbacks.items():
        if name == "progress_bar" or spec is None:
            continue
        if name == "lr_monitor" and not cfg.get("logger"):  # get: logger=null removes the group's key
            continue  # it needs a logger to write to
        callbacks.append(_instantiate(f"callbacks.{name}", spec, {"dirpath": str(outdir / "checkpoints")}))
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    if len(checkpoints) != 1:
        raise UserError("Training needs exactly one ModelCheckpoint callback (callbacks.model_checkpoint): the report "
                        "evaluates its best checkpoint.")
    bar = progress_bar_kind(cfg.callbacks.progress_bar)
    if bar == "rich":
        callbacks.append(RichProgressBar())
    elif bar == "tqdm":
        callbacks.append(TQDMProgressBar())
    return callbacks, checkpoints[0]


def build_loggers(cfg: DictConfig, outdir: Path) -> list[Logger]:
    loggers = []
    for name, spec in (cfg.get("logger") or {}).items():  # get: logger=null removes the group's key
        if spec is None:
            continue
        target = hydra.utils.get_class(spec._target_) if isinstance(spec, DictConfig) and "_target_" in spec else None
        wants_dir = target is not None and "save_dir" in inspect.signature(target).parameters
        # Null paths and names mean: this run's directory, and the run's name (the job number in a sweep).
        defaults = {"run_name": outdir.name, "name": outdir.name, **({"save_dir": str(outdir)} if wants_dir else {})}
        loggers.append(_instantiate(f"logger.{name}", spec, defaults))
    return loggers


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger] | bool, outdir: Path) -> L.Trainer:
    options = to_dict(cfg.trainer)
    options["precision"] = resolve_precision(options["precision"], str(options["accelerator"]))
    if options["benchmark"] is None:  # every batch has the same shape: let cuDNN pick its fastest kernels once
        options["benchmark"] = not options["deterministic"]
    if progress_bar_kind(cfg.callbacks.progress_bar) == "none":
        options["enable_progress_bar"] = False
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        # Our SIGUSR1 handler stops at an epoch boundary that resumes exactly (callbacks/preemption.py); Lightning's
        # auto-requeue would write a mid-epoch hpc checkpoint instead. The job script requeues (README).
        plugins.append(SLURMEnvironment(auto_requeue=False))
    try:
        return L.Trainer(**options, callbacks=callbacks, logger=loggers, default_root_dir=str(outdir),
                         plugins=plugins)
    except (TypeError, ValueError) as exc:
        raise UserError(f"Bad trainer option: {exc}. trainer.* keys are passed to lightning.Trainer.") from exc


def prepare_data_root(cfg: DictConfig) -> Path:
    root = Path(cfg.data.root).expanduser()
    demo = cfg.data.demo
    if demo and demo.generate and not is_demo_root(root):
        log.info("Generating the synthetic demo dataset in %s", root)
        generate(root, n_per_class=int(demo.n_per_class), size=int(demo.size), seed=int(demo.seed))
    return root.resolve()


def build_datamodule(data_cfg: Any, root: Path, preprocess: Preprocess, seed: int = 0,
                     accelerator: str = "auto",
                     samples: dict[str, list[tuple[Path, int]]] | None = None) -> BCCDataModule:
    augment = AugmentConfig(**to_dict(data_cfg.augment)) if data_cfg.augment is not None else None
    return BCCDataModule(root, preprocess, batch_size=data_cfg.batch_size, num_workers=data_cfg.num_workers,
                         augment=augment, balanced_sampler=bool(data_cfg.balanced_sampler),
                         seed=int(seed), cache=data_cfg.cache, fold=data_cfg.fold,
                         cache_budget_gb=float(data_cfg.cache_budget_gb),
                         gpu=pick_device(accelerator).type == "cuda", samples=samples)


def _pos_weight(setting: Any, datamodule: BCCDataModule) -> float | None:
    if setting in (None, "none"):
        return None
    if setting == "auto":
        benign, malignant = datamodule.class_counts("train")
        return benign / malignant
    return float(setting)


def resume_path(cfg: DictConfig, outdir: Path) -> str | None:
    """`ckpt_path=PATH`, or `resume=true`: this run directory's last.ckpt. Checked before any work starts."""
    path = cfg.ckpt_path
    if cfg.resume and not path:
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
    check_config(cfg)
    check_accelerator(cfg.trainer.accelerator, cfg.trainer.devices)
    unfreeze = cfg.model.unfreeze_at_epoch
    if unfreeze is not None and not cfg.model.freeze_backbone:
        raise UserError("model.unfreeze_at_epoch needs model.freeze_backbone=true (nothing is frozen to unfreeze).")


def build(cfg: DictConfig, outdir: Path) -> tuple[BCCClassifier, BCCDataModule, dict[str, Any]]:
    """The data module (scanned first: a bad layout fails before any weights load) and the model."""
    root = prepare_data_root(cfg)
    synthetic = is_demo_root(root)
    data_info = {"root": str(root), "synthetic_data": synthetic, "classes": ["benign", "malignant"],
                 "fold": cfg.data.fold}
    model_cfg = to_dict(cfg.model)
    fold = cfg.data.fold
    samples = {s: scan_split(root, s) if fold is None else fold_samples(root, s, int(fold)) for s in SPLITS}
    # Stain normalisation is fitted on the training split only (or a reference image), before any loader exists.
    preprocess = with_stain_norm(resolve_preprocess(model_cfg), cfg.data.stain_norm,
                                 [p for p, _ in samples["train"]], cfg.data.stain_reference)
    if preprocess.stain_norm:
        log.info("Stain normalisation: %s, fitted on %s", preprocess.stain_norm["method"],
                 cfg.data.stain_reference or "the training split")
    datamodule = build_datamodule(cfg.data, root, preprocess, int(cfg.seed), str(cfg.trainer.accelerator),
                                  samples=samples)
    # get: scheduler=null removes the group's key (a constant learning rate, as scheduler=none)
    model = BCCClassifier(model_cfg, to_dict(cfg.optimizer), to_dict(cfg.get("scheduler")),
                          pos_weight=_pos_weight(cfg.model.pos_weight, datamodule), data_info=data_info,
                          preprocess=preprocess.to_dict())
    counts = {s: datamodule.class_counts(s) for s in SPLITS}
    log.info("Data %s%s: %s (benign, malignant)", root, " [SYNTHETIC DEMO DATA]" if synthetic else "", counts)
    return model, datamodule, data_info


def audit_data(cfg: DictConfig, datamodule: BCCDataModule) -> dict[str, Any] | None:
    """data.audit=warn|error|off on the splits this run uses (its root and fold), before any training."""
    # The keys bcc-audit reads too (data.num_workers, data.cache), so both describe the same files alike.
    leakage = audit_gate(cfg.data.audit, datamodule.root, datamodule.fold,
                         workers=audit_workers(cfg.data.num_workers), cache_setting=cfg.data.cache,
                         warn=log.warning)
    # Patients on both sides (manifest groups, or inferred from names and folders) leak as much as copies.
    return with_group_overlap(leakage, cfg.data.audit, datamodule.root, datamodule.fold,
                              warn=log.warning)


def test_best(cfg: DictConfig, model: BCCClassifier, datamodule: BCCDataModule, checkpoint: ModelCheckpoint,
              trainer: L.Trainer, loggers: list[Logger], outdir: Path,
              leakage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the best checkpoint (the weights in memory after fast_dev_run) and write metrics.json."""
    best_path = checkpoint.best_model_path or checkpoint.last_model_path
    tested = load_checkpoint(best_path) if best_path else model.eval()
    writer = next((lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
    settings = EvalSettings(split="test", report=cfg.report, accelerator=str(cfg.trainer.accelerator),
                            precision=trainer.precision)
    result = evaluate(tested, datamodule, outdir / "test", settings, Path(best_path) if best_path else None,
                      tensorboard=writer, leakage=leakage)
    if cfg.data.fold is not None:  # the validation fold's predictions, for bcc-aggregate
        predict_split_csv(tested, datamodule, "val", outdir / "val_predictions.csv",
                          accelerator=str(cfg.trainer.accelerator), precision=trainer.precision)
    for lg in loggers:
        lg.log_metrics({f"test/{k}": v for k, v in result["metrics"].items()
                        if isinstance(v, float) and math.isfinite(v)}, step=trainer.global_step)
    best = checkpoint.best_model_score
    result.update({"monitor": checkpoint.monitor, "best_monitor_value": float(best) if best is not None else None,
                   "epochs_trained": trainer.current_epoch, "run_dir": str(outdir),
                   "checkpoint": best_path or None})
    write_metrics_json(outdir, result)
    write_card(outdir, dict(tested.hparams), result, best_path or None)
    return result


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def record_in_trackers(cfg: DictConfig, loggers: list[Logger], outdir: Path) -> None:
    """The composed config as params (every logger), and for MLflow the report, metrics.json and model card as
    artifacts of the run (per-epoch metrics went there during training)."""
    params = _flatten(to_dict(cfg))
    for lg in loggers:
        lg.log_hyperparams(params)
        if isinstance(lg, MLFlowLogger):
            for name in ("metrics.json", "model_card.md", "model_card.json", "history.csv"):
                if (outdir / name).is_file():
                    lg.experiment.log_artifact(lg.run_id, str(outdir / name))
            lg.experiment.log_artifacts(lg.run_id, str(outdir / "test"), artifact_path="report")
        lg.finalize("success")
        if isinstance(lg, WandbLogger):
            lg.experiment.finish()  # flushes the offline run to disk now, not at interpreter exit
