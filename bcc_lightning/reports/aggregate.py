"""Sweep results: one row per job, and per configuration mean ± sd with Student-t (and, for k-fold runs,
Nadeau-Bengio corrected) 95 % intervals over folds and seeds, pooled held-out predictions, and paired comparisons
between configurations (corrected resampled t-test, Wilcoxon signed-rank).

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

from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.data.layout import fold_samples, fold_settings, group_of_paths, read_manifest
from bcc_lightning.reports.metrics import METRICS, metric_keys, read_metrics
from bcc_lightning.reports.report import write_metric_files
from bcc_lightning.reports.statistics import corrected_resampled_t, corrected_t_interval, t_interval, wilcoxon
from bcc_lightning.utils.atomic_io import write_json, write_text
from bcc_lightning.utils.errors import UserError


def _keys() -> list[str]:
    """The metrics these tables show: the registry's summary metrics (read at call time, so a metric registered
    later is included)."""
    return metric_keys("summary")


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
        metrics = read_metrics(data.get("metrics"))  # old runs' spellings (acc, sensitivity) mapped on read
        row["test"] = {k: metrics.get(k) for k in _keys()}
        row["data_root"] = data.get("data_root")
        row["fold"] = data.get("fold")
        row["n_test"] = metrics.get("n")
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
    test_keys = _keys()
    header = ["job", *keys, "status", "monitor", "best_monitor_value", *[f"test_{k}" for k in test_keys],
              "checkpoint"]
    ordered = sorted(jobs, key=_sort_key)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    md = ["| " + " | ".join(["job", *keys, "val/loss" if any(r.get("monitor") == "val/loss" for r in jobs)
                              else "monitor", *[f"test {METRICS[k].short}" for k in test_keys]]) + " |",
          "|" + "---|" * (len(keys) + 2 + len(test_keys))]
    for row in ordered:
        test = row.get("test") or {}
        values = [row["overrides"].get(k, "") for k in keys]
        writer.writerow([row["job"], *values, row["status"], row.get("monitor") or "", row.get("best_monitor_value"),
                         *[test.get(k) for k in test_keys], row.get("checkpoint") or ""])
        fmt = [f"{test[k]:.4f}" if isinstance(test.get(k), float) else "–" for k in test_keys]
        best = row.get("best_monitor_value")
        md.append("| " + " | ".join([row["job"], *values, f"{best:.4f}" if isinstance(best, float)
                                     else row["status"], *fmt]) + " |")
    return buffer.getvalue(), "\n".join(md) + "\n"


BOUNDS = (0.0, 1.0)
VARYING = ("data.fold", "seed")  # what repeats a configuration rather than defining it


def config_name(overrides: dict[str, str], shared: set[str]) -> str:
    items = [f"{k}={v}" for k, v in sorted(overrides.items()) if k not in VARYING and k not in shared]
    return " ".join(items) or "(one configuration)"


def describe(values: list[float], sizes: tuple[float, float] | None = None,
             sizes_note: str | None = None, bounds: tuple[float, float] = BOUNDS) -> dict[str, Any]:
    """Mean ± sd with a Student-t 95 % interval, plus the Nadeau-Bengio corrected interval when the runs are
    k-fold folds with known (n_train, n_test); otherwise `corrected_unavailable` says why."""
    data = np.asarray(values, dtype=float)
    # bounds: the metric's range (the registry's; [0, 1] for proportions and AUROC): the interval is clipped to it,
    # with a note (clipping cannot lose coverage; benchmarks/statistics_coverage.py compares it with a logit-scale t
    # interval).
    t = t_interval(data, bounds=bounds)
    out: dict[str, Any] = {"n": int(len(data)), "mean": float(data.mean()),
                           "std": float(data.std(ddof=1)) if len(data) > 1 else 0.0,
                           "ci_low": t.low, "ci_high": t.high, "ci_method": t.method}
    if t.reason:
        out["ci_reason"] = t.reason
    if t.note:
        out["ci_note"] = t.note
    if sizes is None:
        out["corrected_unavailable"] = sizes_note or "not k-fold runs"
    else:
        c = corrected_t_interval(data, *sizes, bounds=bounds)
        out["corrected"] = {"low": c.low, "high": c.high, "method": c.method, "n_train": sizes[0],
                            "n_test": sizes[1], **({"reason": c.reason} if c.reason else {}),
                            **({"note": c.note} if c.note else {})}
    return out


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


def _fold_sizes(members: list[dict[str, Any]]) -> tuple[tuple[float, float] | None, str | None]:
    """Mean (n_train, n_test) over k-fold runs for the Nadeau-Bengio correction, or (None, why not).

    n_train counts original training images (augmented copies are not new samples). n_test is the part of the data
    that changes between folds: the test fold without a held-out test, the validation fold with one (every fold is
    then scored on the same test images, and only the training sets differ).
    """
    if not members or any(m.get("fold") is None for m in members):
        return None, "not k-fold runs (no data.fold)"
    root = members[0].get("data_root")
    if not root or not (Path(root) / "manifest.csv").is_file():
        return None, ("training-set sizes unknown (the data root with its manifest.csv is not available), so only "
                      "the Student-t interval is shown")
    copies = {r["path"] for r in read_manifest(root) or [] if r.get("augmentation", "none") != "none"}
    _, holdout = fold_settings(root)
    resolved = Path(root).resolve()
    trains, tests = [], []
    for m in members:
        fold = int(m["fold"])
        train = [p for p, _ in fold_samples(root, "train", fold)
                 if p.resolve().relative_to(resolved).as_posix() not in copies]
        trains.append(len(train))
        tests.append(len(fold_samples(root, "val" if holdout else "test", fold)))
    if min(trains) == 0 or min(tests) == 0:
        return None, "a fold has no training or held-out images"
    return (float(np.mean(trains)), float(np.mean(tests))), None


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
    sizes: dict[str, tuple[tuple[float, float] | None, str | None]] = {}
    for name, members in sorted(configs.items()):
        sizes[name] = _fold_sizes(members)
        stats = {k: describe([m["test"][k] for m in members if m["test"].get(k) is not None], *sizes[name],
                             bounds=METRICS[k].bounds)
                 for k in _keys() if any(m["test"].get(k) is not None for m in members)}
        entry = {"runs": len(members), "protocol": protocols[name][0], "stats": stats,
                 "folds": sorted(m["fold"] for m in members if m.get("fold") is not None),
                 "n_test_per_run": sorted({m["n_test"] for m in members if m.get("n_test") is not None})}
        if sizes[name][0] is not None:
            entry["fold_sizes"] = {"n_train": sizes[name][0], "n_test": sizes[name][1]}
        oof = _pooled_predictions(members, sweep_dir / "aggregate" / _slug(name))
        if oof:
            entry["out_of_fold"] = oof
        result["configs"][name] = entry
    names = sorted(configs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            comparison = _paired(configs[a], configs[b], a, b, sizes[a][0] if sizes[a][0] == sizes[b][0] else None)
            if comparison:
                result["comparisons"].append(comparison)
    return result


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "config"


def _read_scored(path: Path) -> tuple[list[str], list[int], list[float]]:
    """(paths, true labels, probabilities) of the scored rows of a predictions.csv with known labels."""
    paths, labels, probs = [], [], []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("true_label") and row.get("prob_malignant"):
                paths.append(row["path"])
                labels.append(CLASS_NAMES.index(row["true_label"]))
                probs.append(float(row["prob_malignant"]))
    return paths, labels, probs


def _pooled_predictions(members: list[dict[str, Any]], outdir: Path) -> dict[str, Any] | None:
    """Each fold's held-out images once, pooled into one ROC curve and confusion matrix, with 95 % intervals.

    Without a held-out test these are the test folds: true out-of-fold predictions. With one, only the validation
    folds are held out, and they chose each run's checkpoint (early stopping), so the pool is optimistic. When the
    manifest groups the images (patients), the intervals resample whole groups (statistics.metric_intervals), since
    image-level intervals of clustered images cover far less than 95 %.
    """
    if not members or any(m.get("fold") is None for m in members) or len({m["fold"] for m in members}) < len(members):
        return None  # not one run per fold (e.g. several seeds): pooling would count images twice
    holdout = _protocol(members[0].get("data_root")).endswith(", held-out test")
    paths, labels, probs = [], [], []
    for m in members:
        job = Path(m["dir"])
        source = job / "val_predictions.csv" if holdout else job / "test" / "predictions.csv"
        if not source.is_file():
            return None
        fold_paths, fold_labels, fold_probs = _read_scored(source)
        paths += fold_paths
        labels += fold_labels
        probs += fold_probs
    root = members[0].get("data_root")
    group_of = group_of_paths(root) if root and (Path(root) / "manifest.csv").is_file() else {}
    groups = [group_of.get(p) for p in paths]
    # One image per group is the independent-images case; a missing group leaves the units unknown.
    grouped = bool(groups) and None not in groups and len(set(groups)) < len(groups)
    kind = ("validation folds, used for model selection (early stopping): optimistic" if holdout
            else "test folds (out-of-fold)")
    metrics, figures = write_metric_files(outdir, labels, probs, 0.5, f"pooled {kind}",
                                          groups=groups if grouped else None)
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
    keys = [k for k in _keys() if k in metrics["intervals"]]
    return {"n": metrics["n"], **{k: metrics[k] for k in keys}, "source": kind,
            "intervals": {k: metrics["intervals"][k] for k in keys}, "n_groups": len(set(groups)) if grouped else None,
            "interval_units": (f"{len(set(groups))} groups from manifest.csv (whole groups resampled)" if grouped
                               else "images (no groups in manifest.csv, or one image per group)"),
            "optimistic": holdout, "figures": str(outdir.relative_to(outdir.parent.parent))}


def _paired(a_jobs: list[dict[str, Any]], b_jobs: list[dict[str, Any]], a: str, b: str,
            sizes: tuple[float, float] | None) -> dict[str, Any] | None:
    """Differences on the same folds (or seeds): Student-t (or Nadeau-Bengio corrected) interval of the mean
    difference, the corrected resampled t-test when the runs are folds, and the Wilcoxon signed-rank test."""
    def unit(job: dict[str, Any]) -> tuple:
        return (job.get("fold"), job["overrides"].get("seed"))

    a_by, b_by = {unit(j): j for j in a_jobs}, {unit(j): j for j in b_jobs}
    common = sorted(set(a_by) & set(b_by), key=str)
    if len(common) < 2:
        return None
    out: dict[str, Any] = {"a": a, "b": b, "pairs": len(common), "metrics": {}}
    for key in _keys():
        diffs = [a_by[u]["test"][key] - b_by[u]["test"][key] for u in common
                 if a_by[u]["test"].get(key) is not None and b_by[u]["test"].get(key) is not None]
        if len(diffs) < 2:
            continue
        entry: dict[str, Any] = {"differences": diffs, "mean": float(np.mean(diffs))}
        if sizes is not None:
            test = corrected_resampled_t(diffs, *sizes)
            interval = test.interval
            entry.update(t_statistic=test.statistic, t_p=test.p_value, t_method=test.method,
                         **({"t_reason": test.reason} if test.reason else {}))
        else:
            low, high = METRICS[key].bounds
            interval = t_interval(diffs, bounds=(low - high, high - low))
            entry["t_method"] = "not run: needs k-fold runs with known training/held-out sizes"
        entry.update(ci_low=interval.low, ci_high=interval.high, ci_method=interval.method)
        w = wilcoxon(diffs)
        entry.update(wilcoxon_p=w.p_value, wilcoxon_method=w.method,
                     wilcoxon_min_p=w.details.get("min_attainable_p"), **({"wilcoxon_reason": w.reason}
                                                                          if w.reason else {}))
        out["metrics"][key] = entry
    return out


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def _pooled_cell(pooled: dict[str, Any], key: str) -> str:
    value, ci = pooled.get(key), (pooled.get("intervals") or {}).get(key) or {}
    if value is None:
        return "–"
    if ci.get("low") is None:
        return f"{value:.3f} (no CI: {ci.get('reason') or 'undefined'})"
    flag = f", **unreliable: {ci['n_groups']} groups**" if ci.get("unreliable") else ""
    return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}{flag}]"


def _caveats(result: dict[str, Any]) -> list[str]:
    """What each interval leaves out, in words, for the protocols present."""
    protocols = {e["protocol"] for e in result["configs"].values()}
    lines = ["What the intervals mean:",
             "- **Student t** (n−1 df): treats the runs as independent draws. Right for seeds on fixed data; too "
             "narrow for cross-validation folds, whose training sets overlap.",
             "- **Nadeau-Bengio corrected t** (k-fold runs only): inflates the variance by (1/J + n_test/n_train) "
             "for the overlap of training sets. Shown where the training and held-out sizes are known."]
    if any(p.endswith(", held-out test") for p in protocols):
        lines.append("- **Held-out test set**: every fold is scored on the *same* test images, so the spread over "
                     "folds measures training variability only and ignores test-sampling variance; see each run's "
                     "report.md for the test-set interval over images.")
    if any(p.endswith(", no held-out test") for p in protocols):
        lines.append("- **No held-out test**: each fold is scored on its own test fold; the corrected interval "
                     "accounts for the dependence between folds only approximately (a heuristic correlation).")
    if any(p in ("train/val/test split", "plain folders", "unknown") for p in protocols):
        lines.append("- **Seeds on one split**: the spread covers training randomness only, not which images "
                     "happened to land in the test split.")
    missing = sorted({st.get("corrected_unavailable") for e in result["configs"].values()
                      for st in e["stats"].values() if st.get("corrected_unavailable")} - {"not k-fold runs (no "
                                                                                             "data.fold)"})
    lines += [f"- Corrected interval not shown: {why}." for why in missing]
    if any(st.get("ci_note") or (st.get("corrected") or {}).get("note") for e in result["configs"].values()
           for st in e["stats"].values()):
        lines.append("- Every metric has a range ([0, 1] for proportions and AUROC); where a t interval reached "
                     "beyond, it is clipped to it (aggregate.json's ci_note gives the unclipped ends). Clipping keeps "
                     "the interval's coverage.")
    return lines + [""]


def aggregate_tables(result: dict[str, Any]) -> tuple[str, str]:
    # The metrics the results hold, in the registry's order (an old aggregate.json may lack a newer metric).
    stat_keys = [k for k in _keys() if any(k in e["stats"] for e in result["configs"].values())] or _keys()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["config", "runs", "protocol", "metric", "mean", "std", "ci95_low", "ci95_high", "ci_method",
                     "corrected_ci95_low", "corrected_ci95_high", "corrected_method"])
    md = ["## Per configuration", "",
          "mean ± sd over folds/seeds, [Student-t 95 % CI], and {Nadeau-Bengio corrected 95 % CI} for k-fold runs.",
          "", "| configuration | runs | " + " | ".join(METRICS[k].short for k in stat_keys) + " |",
          "|---|---|" + "---|" * len(stat_keys)]
    for name, entry in result["configs"].items():
        cells = []
        for key in stat_keys:
            st = entry["stats"].get(key)
            if st is None:
                cells.append("–")
                continue
            corrected = st.get("corrected") or {}
            writer.writerow([name, entry["runs"], entry["protocol"], key, st["mean"], st["std"], st["ci_low"],
                             st["ci_high"], st["ci_method"], corrected.get("low"), corrected.get("high"),
                             corrected.get("method", st.get("corrected_unavailable", ""))])
            cell = f"{st['mean']:.3f} ± {st['std']:.3f} " + (
                f"[{_num(st['ci_low'])}, {_num(st['ci_high'])}]" if st["ci_low"] is not None
                else f"(no CI: {st.get('ci_reason') or 'undefined'})")
            if corrected:
                cell += f" {{{_num(corrected.get('low'))}, {_num(corrected.get('high'))}}}"
            cells.append(cell)
        md.append(f"| {name} | {entry['runs']} | " + " | ".join(cells) + " |")
    md += [""] + _caveats(result)
    pooled = [(n, e["out_of_fold"]) for n, e in result["configs"].items() if "out_of_fold" in e]
    if pooled:
        pooled_keys = [k for k in _keys() if any(k in o for _, o in pooled)]
        md += ["## Pooled held-out predictions (threshold 0.5)", "",
               "value [95 % CI]; the interval's method and units are in the last column.", "",
               "| configuration | pooled from | images | " + " | ".join(METRICS[k].short for k in pooled_keys)
               + " | intervals | figures |", "|---|---|---|" + "---|" * len(pooled_keys) + "---|---|"]
        for name, o in pooled:
            cells = [_pooled_cell(o, key) for key in pooled_keys]
            methods = sorted({ci["method"] for ci in (o.get("intervals") or {}).values() if ci.get("method")})
            md.append(f"| {name} | {o['source']} | {o['n']} | " + " | ".join(cells)
                      + f" | {'; '.join(methods)} ({o.get('interval_units', 'images')}) | "
                      f"[ROC]({o['figures']}/roc_curve.png), [confusion]({o['figures']}/confusion_matrix.png) |")
        if any(o.get("optimistic") for _, o in pooled):
            md += ["", "With a held-out test set the pooled images are the validation folds, which picked each "
                   "run's checkpoint (early stopping): these numbers are optimistic, not out-of-fold estimates."]
        md.append("")
    if result["comparisons"]:
        md += ["## Paired comparisons (same folds/seeds; difference = first − second)", "",
               "| first | second | pairs | metric | mean difference [95 % CI] | CI method | corrected t p | "
               "Wilcoxon p (method) |", "|---|---|---|---|---|---|---|---|"]
        for c in result["comparisons"]:
            for key, m in c["metrics"].items():
                t_p = _num(m.get("t_p")) if "t_p" in m else "–"
                md.append(f"| {c['a']} | {c['b']} | {c['pairs']} | {METRICS[key].short if key in METRICS else key} | "
                          f"{m['mean']:+.3f} [{_num(m['ci_low'], '+.3f')}, {_num(m['ci_high'], '+.3f')}] | "
                          f"{m['ci_method']} | {t_p} | {_num(m['wilcoxon_p'])} ({m['wilcoxon_method']}) |")
        md += ["", "Tests: the Nadeau-Bengio corrected resampled t-test (k-fold runs with known sizes) and the "
               "Wilcoxon signed-rank test (scipy; zero differences dropped). With few folds the Wilcoxon test "
               "cannot reach small p-values (5 pairs: p ≥ 0.0625); read the interval of the mean difference too."]
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
