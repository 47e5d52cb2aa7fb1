"""Print one row per job of a sweep (or any folder of runs) from their metrics.json files.

python scripts/summarize_sweep.py logs/train/default/multiruns/<sweep> --sort test.acc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"test": {"acc": 1}} -> {"test.acc": 1}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def collect(root: Path) -> list[dict[str, Any]]:
    """One dict per job under `root`: its overrides plus its flattened metrics.json."""
    rows = []
    for metrics_file in sorted(root.glob("**/metrics.json")):
        job = metrics_file.parent
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        row = {"job": str(job.relative_to(root)) or ".", "overrides": " ".join(overrides)}
        row.update(flatten(json.loads(metrics_file.read_text())))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep folder, or any folder holding runs")
    parser.add_argument("--sort", default="test.acc", help="metric to sort by (descending)")
    parser.add_argument(
        "--columns", default="test.acc,val.acc_best,params,wall_time_s", help="comma-separated"
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder: give a sweep or run folder", file=sys.stderr)
        return 2
    rows = collect(args.root)
    if not rows:
        print(f"error: no metrics.json under {args.root}: has any job finished?", file=sys.stderr)
        return 2
    columns = ["job", *args.columns.split(","), "overrides"]
    rows.sort(key=lambda r: (r.get(args.sort) is None, -(r.get(args.sort) or 0)))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        print(
            "| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else str(c) for c in cells) + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
