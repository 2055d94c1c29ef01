"""Sweep summaries: one row per multirun job (issue: sweeps), sorted by the monitored metric.

Written automatically at the end of every `train.py -m` (a Hydra callback) as sweep_summary.csv and
sweep_summary.md in the sweep directory; also `python -m bcc_lightning.aggregate SWEEP_DIR`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from bcc_lightning.errors import UserError
from bcc_lightning.files import write_text

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
    write_text(sweep_dir / "sweep_summary.md", "\n".join(header) + table_md)
    return {"jobs": jobs, "missing": missing}


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency; keep the module importable without it
    _HydraCallback = object  # type: ignore[misc,assignment]


class SweepSummaryCallback(_HydraCallback):
    """Hydra callback: writes the summary when a multirun ends (configured in conf/hydra/default.yaml)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            if sweep_dir.is_dir() and any((p / "metrics.json").is_file() for p in sweep_dir.iterdir() if p.is_dir()):
                write_summary(sweep_dir)
                print(f"Sweep summary: {sweep_dir / 'sweep_summary.md'}")
        except UserError as exc:
            print(f"No sweep summary: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bcc_lightning.aggregate SWEEP_DIR", file=sys.stderr)
        return 2
    try:
        result = write_summary(args[0])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args[0]) / "sweep_summary.md").read_text())
    return 0 if not result["missing"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
