"""Sweep results: one row per job, and per configuration mean ± std with 95 % bootstrap intervals over folds and
seeds, pooled out-of-fold predictions, and paired comparisons between configurations.

Written at the end of every `train.py -m` (tasks/aggregate.py's Hydra callback): sweep_summary.{csv,md} (jobs,
sorted by the monitored metric) and aggregate.{csv,md} (+ aggregate/ figures) in the sweep directory. Also
`bcc-aggregate sweep_dir=SWEEP_DIR`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bcc_lightning.reports.predictions import read_predictions
from bcc_lightning.reports.report import write_metric_files
from bcc_lightning.utils.atomic_io import write_json, write_text
from bcc_lightning.utils.errors import UserError

TEST_KEYS = ("accuracy", "balanced_accuracy", "recall", "specificity", "f1", "auroc")


def _overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    return dict(item.split("=", 1) for item in items if "=" in item and not item.startswith("hydra"))


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job folder (numbered, with a .hydra/ inside) and what it produced; unfinished jobs are kept as such."""
    jobs = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()),
                      key=lambda p: (len(p.name), p.name)):
        row: dict[str, Any] = {"job": job.name, "overrides": _overrides(job), "dir": str(job)}
        metrics_file = job / "metrics.json"
        if not metrics_file.is_file():
            row["status"] = "missing (failed or still running: no metrics.json)"
            jobs.append(row)
            continue
        data = json.loads(metrics_file.read_text())
        row["status"] = "done"
        row["monitor"] = data.get("monitor")
        row["best_monitor_value"] = data.get("best_monitor_value")
        row["checkpoint"] = data.get("checkpoint")
        row["synthetic_data"] = data.get("synthetic_data", False)
        row["test"] = {k: (data.get("metrics") or {}).get(k) for k in TEST_KEYS}
        row["data_root"] = data.get("data_root")
        row["fold"] = data.get("fold")
        jobs.append(row)
    return jobs


def _sort_key(row: dict[str, Any]) -> tuple:
    value = row.get("best_monitor_value")
    ok = row["status"] == "done" and isinstance(value, (int, float)) and math.isfinite(value)
    return (0 if ok else 1, value if ok else 0.0, row["job"])


def summary_tables(jobs: list[dict[str, Any]]) -> tuple[str, str]:
    """(CSV, Markdown) of the jobs, best monitored value first (val/loss: lowest)."""
    # Only what differs between jobs gets a column; settings shared by every job are stated once above the table.
    all_keys = sorted({k for row in jobs for k in row["overrides"]})
    keys = [k for k in all_keys if len({row["overrides"].get(k) for row in jobs}) > 1] or all_keys[:1]
    header = ["job", *keys, "status", "monitor", "best_monitor_value", *[f"test_{k}" for k in TEST_KEYS],
              "checkpoint"]
    ordered = sorted(jobs, key=_sort_key)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    md = ["| " + " | ".join(["job", *keys, "val/loss" if any(r.get("monitor") == "val/loss" for r in jobs)
                              else "monitor", *[f"test {k}" for k in TEST_KEYS]]) + " |",
          "|" + "---|" * (len(keys) + 2 + len(TEST_KEYS))]
    for row in ordered:
        test = row.get("test") or {}
        values = [row["overrides"].get(k, "") for k in keys]
        writer.writerow([row["job"], *values, row["status"], row.get("monitor") or "", row.get("best_monitor_value"),
                         *[test.get(k) for k in TEST_KEYS], row.get("checkpoint") or ""])
        fmt = [f"{test[k]:.4f}" if isinstance(test.get(k), float) else "–" for k in TEST_KEYS]
        best = row.get("best_monitor_value")
        md.append("| " + " | ".join([row["job"], *values, f"{best:.4f}" if isinstance(best, float)
                                     else row["status"], *fmt]) + " |")
    return buffer.getvalue(), "\n".join(md) + "\n"


VARYING = ("data.fold", "seed")  # what repeats a configuration rather than defining it
STAT_KEYS = ("accuracy", "balanced_accuracy", "recall", "specificity", "f1", "auroc")
STAT_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "recall": "sensitivity",
              "specificity": "specificity", "f1": "F1", "auroc": "AUROC"}


def config_name(overrides: dict[str, str], shared: set[str]) -> str:
    items = [f"{k}={v}" for k, v in sorted(overrides.items()) if k not in VARYING and k not in shared]
    return " ".join(items) or "(one configuration)"


def bootstrap_ci(values: list[float], level: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reports are reproducible)."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return (float(data[0]), float(data[0])) if len(data) else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def describe(values: list[float]) -> dict[str, float]:
    data = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(values)
    return {"n": int(len(data)), "mean": float(data.mean()), "std": float(data.std(ddof=1)) if len(data) > 1 else 0.0,
            "ci_low": low, "ci_high": high}


def wilcoxon_signed_rank(differences: list[float]) -> float:
    """Exact two-sided p-value of the Wilcoxon signed-rank test (zero differences dropped; fine up to ~20 pairs)."""
    d = np.asarray([x for x in differences if abs(x) > 1e-12], dtype=float)
    n = len(d)
    if n == 0:
        return 1.0
    ranks = np.empty(n)
    order = np.argsort(np.abs(d), kind="mergesort")
    sorted_abs = np.abs(d)[order]
    i = 0
    while i < n:  # average ranks over ties
        j = i
        while j + 1 < n and sorted_abs[j + 1] == sorted_abs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    observed = ranks[d > 0].sum()
    expected = ranks.sum() / 2
    signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    stats = (signs * ranks).sum(axis=1)
    return float(np.mean(np.abs(stats - expected) >= abs(observed - expected) - 1e-9))


def _protocol(root: str | None) -> str:
    if not root:
        return "unknown"
    summary = Path(root) / "summary.json"
    if not summary.is_file():
        return "plain folders"
    settings = json.loads(summary.read_text()).get("settings", {})
    if not settings.get("folds"):
        return "train/val/test split"
    return f"{settings['folds']}-fold, {'held-out test' if settings.get('holdout_test', True) else 'no held-out test'}"


def aggregate(jobs: list[dict[str, Any]], sweep_dir: Path) -> dict[str, Any]:
    """Per configuration statistics, pooled out-of-fold predictions and paired comparisons."""
    done = [j for j in jobs if j["status"] == "done"]
    all_keys = {k for j in jobs for k in j["overrides"]}
    shared = {k for k in all_keys if len({j["overrides"].get(k) for j in jobs}) == 1}
    configs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in done:
        configs[config_name(job["overrides"], shared)].append(job)
    protocols = {name: sorted({_protocol(j.get("data_root")) for j in members}) for name, members in configs.items()}
    mixed = {name: p for name, p in protocols.items() if len(p) > 1}
    if mixed:
        raise UserError("Mixed protocols within one configuration, so the runs are not repeats of one experiment: "
                        + "; ".join(f"{name}: {', '.join(p)}" for name, p in mixed.items())
                        + ". Aggregate each protocol's sweep separately.")
    result: dict[str, Any] = {"configs": {}, "comparisons": []}
    for name, members in sorted(configs.items()):
        stats = {k: describe([m["test"][k] for m in members if m["test"].get(k) is not None])
                 for k in STAT_KEYS if any(m["test"].get(k) is not None for m in members)}
        entry = {"runs": len(members), "protocol": protocols[name][0], "stats": stats,
                 "folds": sorted(m["fold"] for m in members if m.get("fold") is not None)}
        oof = _pooled_predictions(members, sweep_dir / "aggregate" / _slug(name))
        if oof:
            entry["out_of_fold"] = oof
        result["configs"][name] = entry
    names = sorted(configs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            comparison = _paired(configs[a], configs[b], a, b)
            if comparison:
                result["comparisons"].append(comparison)
    return result


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "config"


def _pooled_predictions(members: list[dict[str, Any]], outdir: Path) -> dict[str, Any] | None:
    """Out-of-fold predictions: each fold's held-out images once (the validation fold with a held-out test, the
    test fold without one), pooled into one ROC curve and confusion matrix."""
    if not members or any(m.get("fold") is None for m in members) or len({m["fold"] for m in members}) < len(members):
        return None  # not one run per fold (e.g. several seeds): pooling would count images twice
    labels, probs = [], []
    for m in members:
        job = Path(m["dir"])
        holdout = _protocol(m.get("data_root")).endswith(", held-out test")
        source = job / "val_predictions.csv" if holdout else job / "test" / "predictions.csv"
        if not source.is_file():
            return None
        fold_labels, fold_probs = read_predictions(source)
        labels += fold_labels
        probs += fold_probs
    metrics, figures = write_metric_files(outdir, labels, probs, 0.5, "out-of-fold (pooled)")
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    return {"n": metrics["n"], "accuracy": metrics["accuracy"], "auroc": metrics["auroc"],
            "recall": metrics["recall"], "specificity": metrics["specificity"],
            "figures": str(outdir.relative_to(outdir.parent.parent))}


def _paired(a_jobs: list[dict[str, Any]], b_jobs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """Differences on the same folds (or seeds): per-unit differences, bootstrap CI of the mean, Wilcoxon p."""
    def unit(job: dict[str, Any]) -> tuple:
        return (job.get("fold"), job["overrides"].get("seed"))

    a_by, b_by = {unit(j): j for j in a_jobs}, {unit(j): j for j in b_jobs}
    common = sorted(set(a_by) & set(b_by), key=str)
    if len(common) < 2:
        return None
    out: dict[str, Any] = {"a": a, "b": b, "pairs": len(common), "metrics": {}}
    for key in ("accuracy", "auroc", "balanced_accuracy"):
        diffs = [a_by[u]["test"][key] - b_by[u]["test"][key] for u in common
                 if a_by[u]["test"].get(key) is not None and b_by[u]["test"].get(key) is not None]
        if len(diffs) < 2:
            continue
        low, high = bootstrap_ci(diffs)
        out["metrics"][key] = {"differences": diffs, "mean": float(np.mean(diffs)), "ci_low": low, "ci_high": high,
                               "wilcoxon_p": wilcoxon_signed_rank(diffs)}
    return out


def aggregate_tables(result: dict[str, Any]) -> tuple[str, str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["config", "runs", "protocol", "metric", "mean", "std", "ci95_low", "ci95_high"])
    md = ["## Per configuration (mean ± std over folds/seeds, [95 % bootstrap CI of the mean])", "",
          "| configuration | runs | " + " | ".join(STAT_NAMES[k] for k in STAT_KEYS) + " |",
          "|---|---|" + "---|" * len(STAT_KEYS)]
    for name, entry in result["configs"].items():
        cells = []
        for key in STAT_KEYS:
            st = entry["stats"].get(key)
            if st is None:
                cells.append("–")
                continue
            writer.writerow([name, entry["runs"], entry["protocol"], key, st["mean"], st["std"], st["ci_low"],
                             st["ci_high"]])
            cells.append(f"{st['mean']:.3f} ± {st['std']:.3f} [{st['ci_low']:.3f}, {st['ci_high']:.3f}]")
        md.append(f"| {name} | {entry['runs']} | " + " | ".join(cells) + " |")
    pooled = [(n, e["out_of_fold"]) for n, e in result["configs"].items() if "out_of_fold" in e]
    if pooled:
        md += ["", "## Pooled out-of-fold predictions", "",
               "| configuration | images | accuracy | sensitivity | specificity | AUROC | figures |",
               "|---|---|---|---|---|---|---|"]
        for name, o in pooled:
            auroc = f"{o['auroc']:.3f}" if o["auroc"] is not None else "–"
            md.append(f"| {name} | {o['n']} | {o['accuracy']:.3f} | {o['recall']:.3f} | {o['specificity']:.3f} | "
                      f"{auroc} | [ROC]({o['figures']}/roc_curve.png), "
                      f"[confusion]({o['figures']}/confusion_matrix.png) |")
    if result["comparisons"]:
        md += ["", "## Paired comparisons (same folds/seeds; difference = first − second)", "",
               "| first | second | pairs | metric | mean difference [95 % CI] | Wilcoxon p |",
               "|---|---|---|---|---|---|"]
        for c in result["comparisons"]:
            for key, m in c["metrics"].items():
                md.append(f"| {c['a']} | {c['b']} | {c['pairs']} | {STAT_NAMES.get(key, key)} | "
                          f"{m['mean']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}] | {m['wilcoxon_p']:.3f} |")
        md += ["", "With few folds the exact Wilcoxon test cannot reach small p-values (5 pairs: p ≥ 0.0625); read "
               "the interval of the mean difference too."]
    return buffer.getvalue(), "\n".join(md) + "\n"


def write_summary(sweep_dir: str | Path) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"Sweep directory {sweep_dir} does not exist.")
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        raise UserError(f"{sweep_dir} holds no multirun jobs (numbered folders with a .hydra/ inside).")
    table_csv, table_md = summary_tables(jobs)
    missing = [j["job"] for j in jobs if j["status"] != "done"]
    synthetic = any(j.get("synthetic_data") for j in jobs)
    header = [f"# Sweep summary: {sweep_dir}", ""]
    if synthetic:
        header += ["> SYNTHETIC DEMO DATA in at least one job: these numbers say nothing about real images.", ""]
    header += [f"{len(jobs) - len(missing)} of {len(jobs)} jobs finished; sorted by the monitored metric "
               f"(best first).", ""]
    common = {k: v for k, v in jobs[0]["overrides"].items()
              if all(j["overrides"].get(k) == v for j in jobs) and len(jobs) > 1}
    if common:
        header += ["Common to all jobs: " + ", ".join(f"`{k}={v}`" for k, v in sorted(common.items())), ""]
    if missing:
        header += [f"Missing: jobs {', '.join(missing)} (no metrics.json: failed, killed or still running).", ""]
    write_text(sweep_dir / "sweep_summary.csv", table_csv)
    write_text(sweep_dir / "sweep_summary.md", "\n".join(header) + "\n" + table_md)
    result = aggregate(jobs, sweep_dir) if len(jobs) > len(missing) else {"configs": {}, "comparisons": []}
    agg_csv, agg_md = aggregate_tables(result)
    write_text(sweep_dir / "aggregate.csv", agg_csv)
    write_text(sweep_dir / "aggregate.md", "\n".join(header) + "\n" + agg_md)
    write_json(sweep_dir / "aggregate.json", result)
    return {"jobs": jobs, "missing": missing, "aggregate": result}
