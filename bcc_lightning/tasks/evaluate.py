"""`python eval.py ckpt=PATH [split=test] [data.root=ROOT] [threshold=0.5|youden|f1] [save_to=model.ckpt]` (also
`bcc-eval`).

The model, its preprocessing and its training data root come from the checkpoint, never from the current config.
`save_to=PATH.ckpt` writes a copy of the checkpoint that carries the evaluated operating point (the deployable
model; models.checkpoint.write_deployable): predict, export and serve apply it with threshold=auto wherever it lies.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bcc_lightning.data.audit import audit_gate, audit_workers, external_copies
from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.data.groups import with_group_overlap
from bcc_lightning.data.layout import scan_labelled
from bcc_lightning.models.checkpoint import check_save_to, load_checkpoint, read_checkpoint, write_deployable
from bcc_lightning.reports.card import write_card
from bcc_lightning.reports.evaluation import EvalSettings, evaluate, stain_stress
from bcc_lightning.reports.metrics import METRICS, metric_keys
from bcc_lightning.reports.report import write_metrics_json
from bcc_lightning.utils.atomic_io import write_text
from bcc_lightning.utils.config import check_config, log, run_dir
from bcc_lightning.utils.device import pick_device
from bcc_lightning.utils.errors import UserError


def _eval_fold(cfg: DictConfig, data_info: dict[str, Any]) -> int | None:
    """data.fold if given; else the checkpoint's own fold when its own data root is evaluated."""
    if cfg.data.fold is not None:
        return int(cfg.data.fold)
    return data_info.get("fold") if not cfg.data.root else None


def evaluate_external(cfg: DictConfig, model: Any, datamodule: BCCDataModule, outdir: Path, settings: EvalSettings,
                      ckpt: Path, checkpoint: dict[str, Any], internal: dict[str, Any]) -> dict[str, Any]:
    """`external=PATH`: any labelled B/M folder (any depth, no split layout) scored with the same model and operating
    point (a method is still chosen on the internal val split), audited for copies of training images, and reported
    beside the internal numbers (external/ holds its full report; internal_vs_external.md the comparison)."""
    root = Path(cfg.external).expanduser().resolve()
    samples = scan_labelled(root)
    external_dm = BCCDataModule(root, model.preprocess, batch_size=cfg.data.batch_size,
                                num_workers=cfg.data.num_workers,
                                samples={"test": samples, "val": datamodule.samples("val")},
                                gpu=pick_device(settings.accelerator).type == "cuda")
    leakage = None
    if cfg.data.audit != "off":
        leakage = external_copies([p for p, _ in samples], [p for p, _ in datamodule.samples("train")],
                                  workers=audit_workers(cfg.data.num_workers))
        if not leakage["clean"]:
            log.warning("LEAKAGE (external): %s", leakage["verdict"])
    result = evaluate(model, external_dm, outdir / "external", replace(settings, split="test"), ckpt, checkpoint,
                      leakage=leakage)
    lines = [f"# Internal vs external: {model.hparams.model['name']}", "",
             f"Internal: `{internal['data_root']}` ({internal['split']}, {internal['metrics']['n']} images). External: "
             f"`{root}` ({result['metrics']['n']} images). Same operating point ({result['threshold_method']}).", "",
             "| metric | internal [95 % CI] | external [95 % CI] |", "|---|---|---|"]
    for key in metric_keys("summary"):  # the registry's summary metrics
        lines.append(f"| {METRICS[key].short} | {_with_ci(internal['metrics'], key)} | "
                     f"{_with_ci(result['metrics'], key)} |")
    if leakage is not None:
        lines += ["", f"Leakage check against the training split: {leakage['verdict']}"]
    write_text(outdir / "internal_vs_external.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"root": str(root), "metrics": result["metrics"], "leakage": leakage, "report": str(outdir / "external")}


def _with_ci(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "n/a"
    interval = (metrics.get("intervals") or {}).get(key) or {}
    if interval.get("low") is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def deployable_point(result: dict[str, Any], settings: EvalSettings, model: Any, outdir: Path) -> dict[str, Any]:
    """What save_to writes into the checkpoint: the evaluated operating point and everything needed to apply it
    as it was evaluated (temperature, views, preprocessing, group rule), with where and when it came from."""
    info, metrics = result["operating_point"], result["metrics"]
    return {
        **info,
        "temperature": float(info.get("temperature", 1.0)),
        "tta": bool(settings.tta),
        "views": ("mean over the 8 flips / 90-degree rotations of sigmoid(logit / T)" if settings.tta
                  else "the image alone: sigmoid(logit / T)"),
        "group_rule": settings.group_rule,
        "group_threshold": info.get("group_threshold"),
        "preprocessing": model.preprocess.to_dict(),
        "provenance": {
            "written_by": "bcc-eval save_to", "eval_run": str(outdir),
            "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "data_root": result["data_root"], "split": result["split"],
            "fold": result.get("fold"), "threshold_method": result["threshold_method"],
            "metrics": {key: metrics.get(key) for key in ("n", "threshold", *metric_keys("card"))},
            "leakage": (result.get("leakage") or {}).get("verdict"),
        },
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    if not cfg.ckpt:
        raise UserError("Pass the checkpoint to evaluate: `python eval.py ckpt=outputs/train/<run>/checkpoints/"
                        "last.ckpt` (train.py prints the best checkpoint's path at the end).")
    if not isinstance(cfg.tta, bool):
        raise UserError(f"tta must be true or false for bcc-eval (got {cfg.tta!r}): it decides the views the "
                        f"operating point is chosen with, which save_to then records.")
    if cfg.split not in ("train", "val", "test"):
        raise UserError(f"split must be train, val or test (got {cfg.split!r}).")
    outdir = run_dir()
    ckpt = Path(cfg.ckpt).expanduser().resolve()
    save_to = check_save_to(cfg.save_to, ckpt) if cfg.save_to else None  # before the work, not after
    checkpoint = read_checkpoint(ckpt)
    model = load_checkpoint(ckpt, checkpoint)
    data_info = model.hparams.get("data_info") or {}
    root_value = cfg.data.root or data_info.get("root")
    if not root_value:
        raise UserError(f"The checkpoint {ckpt} does not say which data it was trained on; pass data.root=ROOT.")
    accelerator = str(cfg.trainer.accelerator)
    datamodule = BCCDataModule(Path(root_value).expanduser(), model.preprocess, batch_size=cfg.data.batch_size,
                               num_workers=cfg.data.num_workers, fold=_eval_fold(cfg, data_info),
                               cache=cfg.data.cache, gpu=pick_device(accelerator).type == "cuda")
    # data.audit: copies of the evaluated images in the training split inflate every number below.
    leakage = audit_gate(cfg.data.audit, datamodule.root, datamodule.fold,
                         workers=audit_workers(cfg.data.num_workers), cache_setting=cfg.data.cache,
                         warn=log.warning)
    leakage = with_group_overlap(leakage, cfg.data.audit, datamodule.root, datamodule.fold,
                                 warn=log.warning)  # and patients on both sides
    settings = EvalSettings(split=cfg.split, threshold=cfg.threshold, tta=bool(cfg.tta), report=cfg.report,
                            accelerator=accelerator, precision=cfg.trainer.precision,
                            group_rule=str(cfg.group_rule), calibrate=cfg.calibrate,
                            fast=cfg.inference.fast)
    writer = None
    if "tensorboard" in (cfg.get("logger") or {}):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(outdir / "tensorboard"))
    try:
        result = evaluate(model, datamodule, outdir, settings, ckpt, checkpoint, tensorboard=writer, leakage=leakage)
    finally:
        if writer is not None:
            writer.close()
    extra = {}
    if cfg.stain_stress:
        extra["stain_stress"] = stain_stress(model, datamodule, outdir, settings, result["metrics"]["threshold"])
        print("Stain stress (AUROC by HED strength): " + ", ".join(
            f"{r['strength']:g}: {'n/a' if r['auroc'] is None else format(r['auroc'], '.3f')}"
            for r in extra["stain_stress"]))
    if cfg.external:
        extra["external"] = evaluate_external(cfg, model, datamodule, outdir, settings, ckpt, checkpoint, result)
    if extra:
        result.update(extra)
        write_metrics_json(outdir, result)
    write_card(outdir, dict(model.hparams), result, str(ckpt))
    print((outdir / "classification_report.txt").read_text())
    if leakage is not None and not leakage["clean"]:
        print(f"WARNING (leakage): {leakage['verdict']}")
    print(f"Report written to {outdir}/report.md (metrics.json, figures, gradcam/)")
    if save_to is not None:
        point = deployable_point(result, settings, model, outdir)
        write_deployable(ckpt, checkpoint, point, save_to)
        result["deployable_model"] = str(save_to)
        views = "TTA (8 views)" if point["tta"] else "no TTA"
        print(f"Deployable model written to {save_to}: threshold {point['threshold']:.4f} "
              f"({result['threshold_method']}), temperature {point['temperature']:.4g}, {views}. bcc-predict, "
              f"bcc-export and bcc-serve apply it with threshold=auto, wherever the file is copied.")
    return result


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import evaluate as _main

    _main()
