"""`bcc-compare ckpt=A other=B [data.root=ROOT] [split=test] [threshold=0.5]`: are two models different on the same
images?

Each model is scored with its own preprocessing (one BCCDataModule per model); the two image lists must agree.
Tests: DeLong for the AUROC difference, McNemar for accuracy at each model's own threshold, and a paired bootstrap
interval (cluster bootstrap over manifest groups, e.g. patients) for each metric difference. When images cluster in
groups, the clustered DeLong (Obuchowski 1997) and clustered McNemar (Durkalski et al. 2003) tests are the primary
ones; the image-level tests stay beside them (their type-I error with patient effects was 19-27 %). Writes compare.md,
compare.json, compare_roc.png and compare_predictions.csv into the run directory.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from bcc_lightning.data.datamodule import BCCDataModule
from bcc_lightning.models.checkpoint import load_checkpoint
from bcc_lightning.reports.evaluation import EvalSettings, manifest_groups, operating_point_on_val, predict_split
from bcc_lightning.reports.metrics import METRICS, compute_metrics, metric_keys
from bcc_lightning.reports.plots import compare_roc_figure, save_figure
from bcc_lightning.reports.statistics import (
    clustered_delong_test,
    clustered_mcnemar_test,
    delong_test,
    mcnemar_test,
    paired_bootstrap_diff,
)
from bcc_lightning.utils.atomic_io import write_json, write_text
from bcc_lightning.utils.config import check_config, run_dir
from bcc_lightning.utils.device import pick_device
from bcc_lightning.utils.errors import UserError


@dataclass
class _Scores:
    name: str
    ckpt: Path
    root: Path
    paths: list[Path]
    labels: np.ndarray
    probs: np.ndarray
    threshold: float
    method: str
    point: dict[str, Any]


def _score(name: str, ckpt_value: Any, cfg: DictConfig) -> _Scores:
    """One model's probabilities on `cfg.split`, with its own preprocessing, and its own threshold."""
    ckpt = Path(str(ckpt_value)).expanduser().resolve()
    model = load_checkpoint(ckpt)
    data_info = model.hparams.get("data_info") or {}
    root_value = cfg.data.root or data_info.get("root")
    if not root_value:
        raise UserError(f"The checkpoint {ckpt} does not say which data it was trained on; pass data.root=ROOT.")
    fold = int(cfg.data.fold) if cfg.data.get("fold") is not None else (
        data_info.get("fold") if not cfg.data.root else None)
    accelerator = str(cfg.trainer.accelerator)
    device = pick_device(accelerator)
    datamodule = BCCDataModule(Path(root_value).expanduser(), model.preprocess, batch_size=cfg.data.batch_size,
                               num_workers=cfg.data.num_workers, fold=fold, gpu=device.type == "cuda")
    settings = EvalSettings(split=cfg.split, threshold=cfg.threshold, tta=bool(cfg.tta), accelerator=accelerator,
                            precision=cfg.trainer.precision)
    point = operating_point_on_val(model, datamodule, settings, device)
    scored = predict_split(model, datamodule, cfg.split, device, settings.precision, settings.tta)
    return _Scores(name, ckpt, datamodule.root, scored.paths, scored.labels, scored.probs(), point.threshold,
                   point.method, point.info)


def _check_same_images(a: _Scores, b: _Scores, split: str) -> None:
    """Refuse unless both models scored the same files with the same labels, in the same order."""
    paths_a, paths_b = [p.resolve() for p in a.paths], [p.resolve() for p in b.paths]
    if paths_a == paths_b and np.array_equal(a.labels, b.labels):
        return
    only_a, only_b = sorted(set(paths_a) - set(paths_b)), sorted(set(paths_b) - set(paths_a))
    detail = (f"{len(only_a)} image(s) only for {a.name} (e.g. {only_a[0]}), {len(only_b)} only for {b.name}"
              + (f" (e.g. {only_b[0]})" if only_b else "")) if only_a or only_b else "the same files in another order"
    raise UserError(f"The two models were not scored on the same {split} images ({a.name}: {len(paths_a)} from "
                    f"{a.root}, {b.name}: {len(paths_b)} from {b.root}; {detail}). A paired comparison needs the "
                    f"same images: pass data.root=ROOT (and data.fold=K for cross-validation roots) so that both "
                    f"checkpoints are evaluated on one data root.")


def _to_common_threshold(probs: np.ndarray, threshold: float) -> np.ndarray:
    """A strictly increasing map of [0, 1] that sends `threshold` to 0.5.

    paired_bootstrap_diff applies one threshold to both models; this map keeps each model's decisions (p >= t iff
    q >= 0.5) and its ranking (so its AUROC), so one threshold of 0.5 serves two models with their own."""
    t = min(max(float(threshold), 0.0), 1.0)
    below = 0.5 * probs / t if t > 0 else np.zeros_like(probs)
    above = 0.5 + 0.5 * (probs - t) / (1 - t) if t < 1 else np.ones_like(probs)
    return np.where(probs >= t, np.maximum(above, 0.5), np.minimum(below, np.nextafter(0.5, 0)))


# Measured by benchmarks/statistics_coverage.py (docs/statistics_bench.json, null_comparison).
PRIMARY_WHY = ("images of one patient are not independent: with 40 patients x 12 images and no true difference, the "
               "image-level DeLong and McNemar tests rejected 26.9 % and 19.3 % of the time at the 5 % level, the "
               "clustered ones 5.4 % and 5.1 % (benchmarks/statistics_coverage.py, 1,000 replicates)")


def compare_scores(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, threshold_a: float,
                   threshold_b: float, groups: list[str] | None = None, n_resamples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Both models' metrics, each difference (a - b) with its paired bootstrap CI, DeLong and McNemar.

    With groups (several images per patient) the clustered DeLong and McNemar tests give the p-values (primary);
    the image-level tests are kept in the result (`delong`, `mcnemar`, and each row's `image_level_*`)."""
    labels = np.asarray(labels, dtype=np.int64)
    metrics_a, metrics_b = compute_metrics(labels, probs_a, threshold_a), compute_metrics(labels, probs_b,
                                                                                         threshold_b)
    qa, qb = _to_common_threshold(probs_a, threshold_a), _to_common_threshold(probs_b, threshold_b)
    correct_a, correct_b = (probs_a >= threshold_a) == labels, (probs_b >= threshold_b) == labels
    delong = delong_test(labels, probs_a, probs_b)
    mcnemar = mcnemar_test(correct_a, correct_b)
    primary = {"auroc": delong, "accuracy": mcnemar}
    clustered: dict[str, Any] = {}
    if groups:
        clustered = {"auroc": clustered_delong_test(labels, probs_a, probs_b, groups),
                     "accuracy": clustered_mcnemar_test(correct_a, correct_b, groups)}
        primary = dict(clustered)
        why = PRIMARY_WHY
    else:
        why = "no groups (patients) in manifest.csv, or one image per group: the images are the independent units"
    rows = []
    for key in metric_keys("summary"):  # the registry's summary metrics, each with a paired interval
        interval = paired_bootstrap_diff(key, labels, qa, qb, groups=groups, n_resamples=n_resamples,
                                         seed=seed, threshold=0.5)
        a, b = metrics_a.get(key), metrics_b.get(key)
        test = primary.get(key)
        image_test = {"auroc": delong, "accuracy": mcnemar}.get(key) if groups else None
        difference = None if a is None or b is None else a - b
        # Which model the point estimate favours: the metric's direction decides (a lower Brier score is better).
        favours = None if not difference else ("A" if (difference > 0) == METRICS[key].higher_is_better else "B")
        rows.append({"metric": key, "label": METRICS[key].short, "a": a, "b": b, "difference": difference,
                     "favours": favours,
                     "ci": {"low": interval.low, "high": interval.high, "level": interval.level,
                            "method": interval.method + (f", clustered by {len(set(groups))} groups" if groups
                                                         else ""),
                            "n_groups": interval.n_groups, "unreliable": interval.unreliable,
                            **({"reason": interval.reason} if interval.reason else {}),
                            **({"note": interval.note} if interval.note else {})},
                     "p_value": None if test is None else test.p_value,
                     "test": None if test is None else test.method,
                     **({"test_reason": test.reason} if test is not None and test.p_value is None else {}),
                     "image_level_p_value": None if image_test is None else image_test.p_value,
                     "image_level_test": None if image_test is None else image_test.method})
    return {"n": int(len(labels)), "metrics_a": metrics_a, "metrics_b": metrics_b, "differences": rows,
            "delong": delong.as_dict(), "mcnemar": mcnemar.as_dict(),
            "clustered_delong": clustered["auroc"].as_dict() if clustered else None,
            "clustered_mcnemar": clustered["accuracy"].as_dict() if clustered else None,
            "primary_tests": {"auroc": primary["auroc"].method, "accuracy": primary["accuracy"].method, "why": why},
            "n_groups": len(set(groups)) if groups else None, "clustered_by_groups": bool(groups)}


def _fmt(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(a: _Scores, b: _Scores, result: dict[str, Any], split: str) -> str:
    clustered = result["clustered_by_groups"]
    lines = ["# Model comparison", "",
             f"- **A**: `{a.ckpt}` — threshold {a.threshold:.4f} ({a.method})",
             f"- **B**: `{b.ckpt}` — threshold {b.threshold:.4f} ({b.method})",
             f"- data: `{a.root}`, split **{split}**, {result['n']} images scored by both models, each with its own "
             f"preprocessing" + (f"; {result['n_groups']} groups (patients) from manifest.csv" if clustered else ""),
             f"- primary tests: {result['primary_tests']['auroc']} for AUROC, {result['primary_tests']['accuracy']} "
             f"for accuracy — {result['primary_tests']['why']}", "",
             "| metric | A | B | A − B | favours | 95 % CI of A − B (method) | p-value (primary test) |"
             + (" image-level p (not primary) |" if clustered else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if clustered else "")]
    for row in result["differences"]:
        ci = row["ci"]
        interval = (f"[{ci['low']:+.4f}, {ci['high']:+.4f}] ({ci['method']})" if ci["low"] is not None
                    else f"n/a ({ci.get('reason') or 'undefined'})")
        if ci.get("unreliable") and ci["low"] is not None:
            interval += f" — **unreliable: {ci['n_groups']} groups**"
        p = f"{row['p_value']:.4g} ({row['test']})" if row["p_value"] is not None else (
            f"n/a ({row['test']}: {row.get('test_reason') or 'undefined'})" if row["test"] else "– (interval only)")
        diff = "n/a" if row["difference"] is None else f"{row['difference']:+.4f}"
        line = (f"| {row['label']} | {_fmt(row['a'])} | {_fmt(row['b'])} | {diff} | {row.get('favours') or '–'} | "
                f"{interval} | {p} |")
        if clustered:
            line += (f" {_fmt(row['image_level_p_value'], 4)} ({row['image_level_test']}) |"
                     if row["image_level_test"] else " – |")
        lines.append(line)
    mc = result["mcnemar"]["details"]
    delong = result["clustered_delong"] if clustered else result["delong"]
    interval = delong.get("interval") or {}
    lines += ["", f"McNemar: {mc['only_a_correct']} image(s) only A gets right, {mc['only_b_correct']} only B, "
              f"{mc['both_correct']} both, {mc['both_wrong']} neither (each model at its own threshold)."
              + (f" {result['clustered_mcnemar']['details']['groups_with_discordance']} of {result['n_groups']} "
                 f"groups have more images right with one model than with the other." if clustered else ""),
              ("Clustered DeLong" if clustered else "DeLong") + ": AUROC difference with its Wald interval "
              + (f"[{interval['low']:+.4f}, {interval['high']:+.4f}]." if interval.get("low") is not None
                 else f"undefined ({interval.get('reason') or delong.get('reason')})."),
              "The other metrics have a paired bootstrap interval only (both models "
              "scored on each same resample" + (", whole groups from manifest.csv drawn" if clustered else "")
              + ").", "",
              "![compare_roc.png](compare_roc.png)", "",
              "Files: `compare.json`, `compare_predictions.csv` (path, true_label, prob_a, prob_b), "
              "`compare_roc.png`."]
    return "\n".join(lines) + "\n"


def _predictions_csv(path: Path, a: _Scores, b: _Scores) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "true_label", "prob_a", "prob_b"])
    root = a.root.resolve()
    for p, y, pa, pb in zip(a.paths, a.labels, a.probs, b.probs):
        writer.writerow([p.resolve().relative_to(root).as_posix(), int(y), repr(float(pa)), repr(float(pb))])
    write_text(path, buffer.getvalue())


def run(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)
    if not cfg.get("ckpt") or not cfg.get("other"):
        raise UserError("Pass the two checkpoints to compare: `bcc-compare ckpt=outputs/train/<A>/checkpoints/"
                        "best.ckpt other=outputs/train/<B>/checkpoints/best.ckpt` (add data.root=ROOT when they "
                        "were trained on different roots).")
    n_resamples = cfg.get("n_resamples", 2000)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 100:
        raise UserError(f"n_resamples must be a whole number >= 100 (got {n_resamples!r}); 2000 is the default.")
    outdir = run_dir()
    a, b = _score("A", cfg.ckpt, cfg), _score("B", cfg.other, cfg)
    _check_same_images(a, b, cfg.split)
    if len(a.labels) == 0:
        raise UserError(f"No images in {a.root}/{cfg.split}.")
    groups = manifest_groups(a.root, a.paths)
    # Images of one patient are alike: resample whole patients, or the intervals come out too narrow.
    groups = groups if groups is not None and len(set(groups)) < len(groups) else None
    result = compare_scores(a.labels, a.probs, b.probs, a.threshold, b.threshold, groups, n_resamples,
                            int(cfg.get("seed", 0)))
    result = {"split": cfg.split, "data_root": str(a.root.resolve()), "tta": bool(cfg.tta),
              "models": {s.name: {"checkpoint": str(s.ckpt), "threshold": s.threshold, "threshold_method": s.method,
                                  "operating_point": s.point} for s in (a, b)},
              **result}
    fig = compare_roc_figure(a.labels, [(f"A ({a.ckpt.parent.parent.name})", a.probs, a.threshold,
                                         result["metrics_a"]["auroc"]),
                                        (f"B ({b.ckpt.parent.parent.name})", b.probs, b.threshold,
                                         result["metrics_b"]["auroc"])],
                             f"ROC curves, {cfg.split} split ({result['n']} images)")
    save_figure(fig, outdir / "compare_roc.png")
    _predictions_csv(outdir / "compare_predictions.csv", a, b)
    write_json(outdir / "compare.json", result)
    write_text(outdir / "compare.md", _markdown(a, b, result, cfg.split))
    delong = result["delong"]
    print(f"AUROC A {_fmt(result['metrics_a']['auroc'])} vs B {_fmt(result['metrics_b']['auroc'])}: DeLong p = "
          f"{_fmt(delong['p_value'], 4)}; accuracy A {_fmt(result['metrics_a']['accuracy'])} vs B "
          f"{_fmt(result['metrics_b']['accuracy'])}: McNemar p = {_fmt(result['mcnemar']['p_value'], 4)}")
    print(f"Comparison written to {outdir}/compare.md (compare.json, compare_roc.png)")
    return result


if __name__ == "__main__":
    from bcc_lightning.tasks.entry import compare as _main

    _main()
