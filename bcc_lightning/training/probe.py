"""The linear probe (`experiment=linear_probe`): embeddings of a frozen backbone for every split (cached), a logistic
regression head and a cosine kNN chosen on val, and the same outputs as a fine-tuned run: a checkpoint that eval,
predict and export read like any other (the probe folded into the model's head), metrics.json and the report.

The train task runs it when `cfg.probe` is set, and so does the probe task (tasks/probe.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from bcc_lightning.data.cache import default_cache_dir
from bcc_lightning.data.datamodule import BCCDataModule, ImageFolderDataset
from bcc_lightning.data.embeddings import embedding_recipe, embeddings_key, open_or_compute
from bcc_lightning.data.layout import SPLITS, read_manifest
from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.models.probe import fit_knn, fit_logistic, knn_probs, probe_summary
from bcc_lightning.reports import few_shot
from bcc_lightning.reports.card import write_card
from bcc_lightning.reports.evaluation import EvalSettings, evaluate, predict_split_csv
from bcc_lightning.reports.metrics import compute_metrics
from bcc_lightning.reports.report import write_metrics_json
from bcc_lightning.training.assemble import audit_data, build, validate_config
from bcc_lightning.utils.atomic_io import atomic_write, sha256_file, write_text
from bcc_lightning.utils.config import log, run_dir, to_dict
from bcc_lightning.utils.device import pick_device
from bcc_lightning.utils.errors import UserError


def weights_fingerprint(model: BCCClassifier) -> str:
    """The backbone's weights as a sha256: the recorded file's (cheap), else a hash of the tensors themselves (a
    random initialisation depends on the seed, so it has no file to name)."""
    # get: a checkpoint written before initialisation (or model.weights) was recorded lacks the key
    init = model.hparams.get("initialisation") or {}
    if init.get("sha256"):
        return str(init["sha256"])
    weights = (model.hparams.get("model") or {}).get("weights")
    if weights and Path(weights).is_file():
        return sha256_file(weights)
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.backbone.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().clone().reshape(-1).view(torch.uint8).numpy().tobytes())
    return "tensors:" + digest.hexdigest()


def _batches(model: BCCClassifier, datamodule: BCCDataModule, split: str, device: torch.device) -> Any:
    """Pooled backbone features of a split, batch by batch, never augmented (the training split included)."""
    source = datamodule.dataset(split)  # builds or opens the decoded-image cache
    dataset = ImageFolderDataset(source.samples, source.pre, None, source.cache)
    loader = DataLoader(dataset, batch_size=datamodule.batch_size, num_workers=datamodule.num_workers,
                        pin_memory=datamodule.pin_memory)
    model.eval().to(device)
    with torch.inference_mode():
        for images, _ in loader:
            images = images.to(device, non_blocking=True)
            if model.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield model.backbone(model.normalise(images)).float().cpu().numpy()


def embed_splits(model: BCCClassifier, datamodule: BCCDataModule, cache: Any, device: torch.device,
                 splits: tuple[str, ...] = SPLITS) -> dict[str, dict[str, Any]]:
    """{split: {features, labels, status, seconds}} with features (N, D) float32 from the embedding cache."""
    cache_dir = None if cache in (None, "", "none", "null", "off", False) else (
        default_cache_dir() / "embeddings" if cache == "auto" else Path(str(cache)))
    fingerprint = weights_fingerprint(model)
    out = {}
    for split in splits:
        samples = datamodule.samples(split)
        key = embeddings_key([p for p, _ in samples], str(model.hparams.model["name"]), fingerprint,
                             model.preprocess.to_dict(), recipe=embedding_recipe(model.hparams.model))
        start = time.perf_counter()
        features, status = open_or_compute(cache_dir, split, key, len(samples),
                                           lambda s=split: _batches(model, datamodule, s, device), log=log.info)
        out[split] = {"features": features, "labels": np.array([y for _, y in samples], dtype=np.int64),
                      "status": status, "seconds": time.perf_counter() - start, "n": len(samples)}
        log.info("Embeddings '%s': %d x %d (%s, %.1f s)", split, *features.shape, status, out[split]["seconds"])
    return out


def _knn_block(emb: dict[str, dict[str, Any]], ks: list[int], select: str) -> dict[str, Any]:
    train, val, test = emb["train"], emb["val"], emb["test"]
    k, grid = fit_knn(train["features"], train["labels"], val["features"], val["labels"], ks, select)
    probs = knn_probs(train["features"], train["labels"], test["features"], k)
    return {"k": k, "metric": "cosine", "chosen_on": "val", "grid": grid,
            "test": compute_metrics(test["labels"], probs, 0.5)}


def training_groups(root: Path, paths: list[Path]) -> tuple[list[str], np.ndarray, str]:
    """(each training image's group, which images are labelled originals, where the groups came from).

    Groups (patients) come from manifest.csv's group column; an image without one (plain folders, no manifest) is
    its own group, so the few-shot draw then samples images. Augmented copies (manifest augmentation != none) keep
    their source's group and are not counted as labelled images."""
    rows = {row["path"]: row for row in read_manifest(root) or []}
    resolved = Path(root).resolve()
    groups, counted, missing = [], [], 0
    for path in paths:
        try:
            rel = Path(path).resolve().relative_to(resolved).as_posix()
        except ValueError:  # outside the root (never for the layouts read here): on its own
            rel = Path(path).resolve().as_posix()
        row = rows.get(rel) or {}
        if not row.get("group"):
            missing += 1
        groups.append(f"group:{row['group']}" if row.get("group") else f"image:{rel}")
        counted.append(row.get("augmentation", "none") in ("", "none"))
    if missing == len(paths):
        source = "no groups known (no manifest.csv group column), so each image is its own group"
    elif missing:
        source = (f"groups from manifest.csv's group column ({missing} of {len(paths)} images without one are each "
                  f"their own group)")
    else:
        source = f"{len(set(groups))} groups (patients) from manifest.csv's group column"
    return groups, np.array(counted, dtype=bool), source


def _few_shot_block(cfg: DictConfig, settings: DictConfig, emb: dict[str, dict[str, Any]],
                    datamodule: BCCDataModule, Cs: list[float], select: str, outdir: Path,
                    synthetic: bool) -> dict[str, Any] | None:
    """The few-shot curve (reports/few_shot.py) on the cached embeddings: few_shot.csv, few_shot.png and a report.md
    section under test/; its summary for metrics.json. None when probe.few_shot is empty or null."""
    sizes, repeats = few_shot.check_sizes(to_dict(settings.few_shot), settings.few_shot_repeats)
    if not sizes:
        return None
    started = time.perf_counter()
    groups, counted, source = training_groups(datamodule.root, [p for p, _ in datamodule.samples("train")])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # hundreds of tiny L-BFGS fits: handing them between threads costs more than it saves
    try:
        rows = few_shot.few_shot_curve(
            (emb["train"]["features"], emb["train"]["labels"]), groups, (emb["val"]["features"], emb["val"]["labels"]),
            (emb["test"]["features"], emb["test"]["labels"]), sizes, repeats, int(cfg.seed), Cs, select,
            int(settings.max_iter), counted)
    finally:
        torch.set_num_threads(threads)
    summary = few_shot.summarise(rows)
    folder = outdir / "test"
    few_shot.write_csv(rows, folder / "few_shot.csv")
    few_shot.write_figure(summary, folder / "few_shot.png",
                          f"Few-shot linear probe, {repeats} draws per point{' (SYNTHETIC DATA)' if synthetic else ''}")
    info = {"sizes": sizes, "repeats": repeats, "seed": int(cfg.seed), "groups": source, "threshold": 0.5,
            "C": "chosen on the whole val split for each draw, from probe.Cs",
            "rule": "per class, whole groups in a seeded order (one per repeat) until n labelled images; groups with "
                    "both classes are drawn whole and count for both; capped = fewer than n in the training split"}
    report = folder / "report.md"
    if report.is_file():
        write_text(report, report.read_text(encoding="utf-8").rstrip("\n") + "\n\n"
                   + "\n".join(few_shot.markdown(summary, info)))
    return {**info, "csv": "test/few_shot.csv", "figure": "test/few_shot.png", "curve": summary,
            "seconds": time.perf_counter() - started}


def save_probe_checkpoint(model: BCCClassifier, path: Path) -> Path:
    """A Lightning-style checkpoint (weights-only readable) with the model's hyperparameters: load_checkpoint,
    eval, predict and export take it like a fine-tuned run's."""
    checkpoint = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                  "hyper_parameters": to_dict(dict(model.hparams)), "epoch": 0, "global_step": 0,
                  "pytorch-lightning_version": L.__version__}
    return atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), fsync=True)


def run_probe(cfg: DictConfig) -> float | None:
    """Embed, fit the probe and kNN on train (chosen on val), evaluate on test, write metrics.json; return the val
    value of the training monitor (callbacks.model_checkpoint.monitor, e.g. val/loss) for sweepers."""
    outdir = run_dir()
    settings = cfg.probe  # conf/probe/logistic.yaml: the one place its defaults live
    if settings is None:
        raise UserError("The linear probe has no settings: add experiment=linear_probe (or probe=logistic) to the "
                        "command line, or run `python -m bcc_lightning.tasks.probe`, whose config selects them.")
    if settings.head != "logistic":
        raise UserError(f"probe.head={settings.head!r} is not supported: use probe.head=logistic (the kNN "
                        f"classifier always runs beside it, see probe.knn_k).")
    few_shot.check_sizes(to_dict(settings.few_shot), settings.few_shot_repeats)  # before any embedding
    validate_config(cfg)
    L.seed_everything(int(cfg.seed), workers=True)
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    if int(cfg.model.hidden or 0):
        raise UserError("A linear probe fits one linear layer: set model.hidden=0 (the experiment=linear_probe "
                        "default), or fine-tune instead of probing.")
    started = time.perf_counter()
    model, datamodule, data_info = build(cfg, outdir)
    model.hparams.model["probe"] = True  # marks the checkpoint as a probe (the backbone was never trained)
    model.hparams.model["freeze_backbone"] = True
    leakage = audit_data(cfg, datamodule)
    device = pick_device(str(cfg.trainer.accelerator))
    emb = embed_splits(model, datamodule, settings.cache, device)
    select = str(settings.select)
    Cs = [float(c) for c in settings.Cs]
    fitted = fit_logistic(emb["train"]["features"], emb["train"]["labels"], emb["val"]["features"],
                          emb["val"]["labels"], Cs, select, int(settings.max_iter))
    fitted.into(model.head[-1])
    fit_seconds = time.perf_counter() - started
    ckpt = save_probe_checkpoint(model.cpu(), outdir / "checkpoints" / "probe.ckpt")
    tested = load_checkpoint(ckpt)
    eval_settings = EvalSettings(split="test", report=cfg.report, accelerator=str(cfg.trainer.accelerator),
                                 precision=str(cfg.trainer.precision))
    result = evaluate(tested, datamodule, outdir / "test", eval_settings, ckpt, leakage=leakage)
    if cfg.data.fold is not None:  # the validation fold's predictions, for bcc-aggregate
        predict_split_csv(tested, datamodule, "val", outdir / "val_predictions.csv",
                          accelerator=str(cfg.trainer.accelerator))
    checkpointing = cfg.callbacks.model_checkpoint  # the probe writes its own checkpoint, so this may be null
    monitor = str(checkpointing.monitor) if checkpointing is not None and checkpointing.monitor else "val/loss"
    val_values = {"val/loss": fitted.val["loss"], "val/auroc": fitted.val["auroc"], "val/acc": fitted.val["acc"]}
    best = val_values.get(monitor, fitted.val["loss"] if monitor.endswith("loss") else fitted.val["auroc"])
    probe_block = {**probe_summary(fitted), "fit_seconds": fit_seconds,
                   "embeddings": {s: {"n": e["n"], "dim": int(e["features"].shape[1]), "cache": e["status"],
                                      "seconds": e["seconds"]} for s, e in emb.items()}}
    result.update({"monitor": monitor, "best_monitor_value": best, "epochs_trained": 0, "run_dir": str(outdir),
                   "checkpoint": str(ckpt), "probe": probe_block,
                   "knn": _knn_block(emb, [int(k) for k in settings.knn_k], select)})
    curve = _few_shot_block(cfg, settings, emb, datamodule, Cs, select, outdir, bool(data_info["synthetic_data"]))
    if curve is not None:
        result["few_shot"] = curve
    if leakage is not None:
        result["leakage"] = leakage
    write_metrics_json(outdir, result)
    write_card(outdir, dict(tested.hparams), result, str(ckpt))
    m, knn = result["metrics"], result["knn"]["test"]
    print(f"\nRun directory: {outdir}\nProbe checkpoint: {ckpt} (C = {fitted.C:g})")
    print(f"Test ({m['n']} images{', SYNTHETIC DEMO DATA' if data_info['synthetic_data'] else ''}): logistic probe "
          f"accuracy {m['accuracy']:.4f}, AUROC {m['auroc'] or float('nan'):.4f}; kNN (k = {result['knn']['k']}) "
          f"accuracy {knn['accuracy']:.4f}, AUROC {knn['auroc'] or float('nan'):.4f}")
    if curve is not None:
        print("Few-shot (test, mean over draws): " + "; ".join(
            f"n={s['n_per_class']}{'*' if s['capped'] else ''}: acc {s['accuracy']['mean']:.3f}, AUROC "
            f"{s['auroc']['mean']:.3f}" for s in curve["curve"]) + f" -> {outdir / 'test' / 'few_shot.csv'}")
    return best if best is not None and math.isfinite(best) else None
