"""The model card: what the next person who receives a checkpoint needs to know, in model_card.md and .json.

Written by every train and every eval, from the checkpoint's own record and the evaluation's metrics.json: the model
and its initialisation, a fingerprint of the data, the split protocol and the leakage audit, metrics with their
intervals, the operating point and calibration, intended use and limits, and the command that reproduces it.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path
from typing import Any

from bcc_lightning.data.layout import MANIFEST, SPLITS, read_summary, walk_files
from bcc_lightning.models.backbones import initialisation_text
from bcc_lightning.reports.metrics import METRICS, read_metrics
from bcc_lightning.utils.atomic_io import sha256_file, write_json, write_text

INTENDED_USE = ("Research use only. Not a medical device and not for diagnosis: a pathologist makes every clinical "
                "decision. Validated only on the data named below; performance on other labs' stains, scanners, "
                "magnifications or tissue types is unknown until measured (eval.py external=...).")


def data_fingerprint(root: str | Path) -> dict[str, Any]:
    """sha256 of manifest.csv for a prepared folder; else one sha256 over the sorted relative paths and file sizes
    (cheap for large folders, and any added, removed, renamed or resized file changes it)."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return {"method": "sha256 of manifest.csv", "sha256": sha256_file(root / MANIFEST)}
    digest = hashlib.sha256()
    count = 0
    for split in SPLITS:
        folder = root / split
        if folder.is_dir():
            for path in walk_files(folder):
                digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
                count += 1
    return {"method": "sha256 over sorted relative paths and file sizes", "sha256": digest.hexdigest(),
            "files": count}


def _protocol(root: str | Path) -> str:
    summary = read_summary(root)
    if summary is None:
        return "plain train/val/test folders (how they were split is not recorded)"
    return str(summary.get("protocol", "prepared by bcc-prepare"))


def build_card(checkpoint_hparams: dict[str, Any], result: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """The card's fields, from the model's hyperparameters and an evaluation's metrics.json body."""
    model = checkpoint_hparams.get("model") or {}
    data_info = checkpoint_hparams.get("data_info") or {}
    root = result.get("data_root") or data_info.get("root")
    metrics = read_metrics(result.get("metrics"))
    intervals = read_metrics(metrics.get("intervals"))
    rows = {}
    for key, spec in METRICS.items():
        if not spec.card:
            continue
        name, value = spec.short, metrics.get(key)
        interval = intervals.get(key) or {}
        rows[name] = {"value": value, "ci95": [interval.get("low"), interval.get("high")] if interval else None,
                      "method": interval.get("method"), "n_groups": interval.get("n_groups"),
                      "unreliable": bool(interval.get("unreliable")), "reason": interval.get("reason")}
    point = result.get("operating_point") or {"threshold": metrics.get("threshold"),
                                              "method": result.get("threshold_method")}
    return {
        "model": {"backbone": model.get("name"), "source": model.get("source", "timm"),
                  "input": checkpoint_hparams.get("preprocess"),
                  "initialisation": initialisation_text(checkpoint_hparams.get("initialisation"))},
        "checkpoint": {"path": checkpoint, "sha256": sha256_file(checkpoint) if checkpoint and Path(
            checkpoint).is_file() else None},
        "training_data": {"root": data_info.get("root"), "fold": data_info.get("fold"),
                          "synthetic": bool(data_info.get("synthetic_data"))},
        "evaluation_data": {"root": root, "split": result.get("split"), "fold": result.get("fold"),
                            "images": metrics.get("n"),
                            "fingerprint": data_fingerprint(root) if root and Path(root).is_dir() else None,
                            "protocol": _protocol(root) if root else None},
        "leakage_audit": result.get("leakage"),
        "metrics": rows,
        "operating_point": point,
        "calibration": (result.get("operating_point") or {}).get("temperature"),
        "intended_use": INTENDED_USE,
        "reproduce": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _fmt(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def card_markdown(card: dict[str, Any]) -> str:
    m, ev, leak = card["model"], card["evaluation_data"], card.get("leakage_audit")
    lines = [f"# Model card: {m['backbone']}", "", f"> {card['intended_use']}", ""]
    if card["training_data"]["synthetic"]:
        lines += ["> **Trained on SYNTHETIC demo data: these numbers say nothing about real microscopy.**", ""]
    lines += ["## Model", "", f"- backbone: `{m['backbone']}` ({m['source']})",
              f"- initialisation: {m['initialisation']}",
              f"- input: {m['input']}", f"- checkpoint: `{card['checkpoint']['path']}` (sha256 "
              f"{(card['checkpoint']['sha256'] or 'n/a')[:16]})", "",
              "## Data", "", f"- trained on: `{card['training_data']['root']}`"
              + (f" (fold {card['training_data']['fold']})" if card["training_data"]["fold"] is not None else ""),
              f"- evaluated on: `{ev['root']}`, split {ev['split']}, {ev['images']} images",
              f"- data fingerprint: {(ev['fingerprint'] or {}).get('sha256', 'n/a')} "
              f"({(ev['fingerprint'] or {}).get('method', '')})", f"- split protocol: {ev['protocol']}",
              f"- leakage audit: {leak.get('verdict') if leak else 'not run'}", "",
              "## Metrics", "", "| metric | value | 95 % CI | method |", "|---|---|---|---|"]
    for name, row in card["metrics"].items():
        ci = row["ci95"]
        ci_text = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci and ci[0] is not None else (
            f"n/a ({row['reason']})" if row.get("reason") else "n/a")
        if row.get("unreliable") and ci and ci[0] is not None:
            ci_text += f" (unreliable: {row.get('n_groups')} groups)"
        lines.append(f"| {name} | {_fmt(row['value'])} | {ci_text} | {row['method'] or ''} |")
    point = card["operating_point"] or {}
    lines += ["", "## Operating point and calibration", "",
              f"- threshold {_fmt(point.get('threshold'))}: {point.get('method') or 'fixed'}"
              + (f", chosen on {point['chosen_on']}" if point.get("chosen_on") else ""),
              f"- calibration: {'temperature ' + _fmt(card['calibration']) if card['calibration'] else 'none'}", "",
              "## Reproduce", "", f"```\n{card['reproduce']}\n```", ""]
    return "\n".join(lines)


def write_card(outdir: str | Path, checkpoint_hparams: dict[str, Any], result: dict[str, Any],
               checkpoint: str | None) -> dict[str, Any]:
    card = build_card(checkpoint_hparams, result, checkpoint)
    write_json(Path(outdir) / "model_card.json", card)
    write_text(Path(outdir) / "model_card.md", card_markdown(card))
    return card
