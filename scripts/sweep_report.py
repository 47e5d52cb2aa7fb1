"""Report on a sweep: a table of all its jobs, the Pareto set, and plots.

python scripts/sweep_report.py logs/train/<name>/multiruns/<sweep>

Reads what every job left in the sweep folder (`.hydra/overrides.yaml`, `metrics.json`,
`job_status.json`) and the sweep's `optimization_results.yaml`, then writes to
`<sweep>/report/` (or --out):

- `jobs.md` and `jobs.csv`: one row per job with its status (COMPLETED, FAILED with the error,
  PRUNED, or INTERRUPTED when it left no status: killed or still running), the overrides
  that differ between jobs, the objectives and other metrics, and whether it is in the Pareto
  set; the markdown table is printed too;
- `pareto.png` (two or more objectives): the first objective (accuracy) against each other
  one (latency, size), the Pareto set highlighted;
- `history.png`: each objective per job in launch order, with the best so far.

The objectives are the sweep's `optimized_metric` and `hydra.sweeper.direction` (from
optimization_results.yaml), or --objectives test.acc:max,test.latency_ms:min for any sweep.
If the jobs logged to W&B, the table and the plots are logged to the sweep's W&B group as
well (a run of job type `sweep_report`, offline when the jobs were).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

STATUS_FILE = "job_status.json"  # slimlab.utils.sweeps.STATUS_FILE, without importing torch
DEFAULT_METRICS = ("test.acc", "val.acc_best", "params", "wall_time_s")


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


def column_of(metric: str) -> str:
    """The table column of a logged metric name: `test/acc` -> `test.acc`."""
    return metric.replace("/", ".")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _job_sort_key(name: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in Path(name).parts)


def job_folders(root: Path) -> list[Path]:
    """Every job folder under `root`: one holding .hydra/, metrics.json or job_status.json."""
    found: set[Path] = set()
    for pattern in (".hydra/overrides.yaml", "metrics.json", STATUS_FILE):
        found |= {
            p.parent.parent if p.parent.name == ".hydra" else p.parent
            for p in root.glob(f"**/{pattern}")
        }
    found = {f for f in found if "report" not in f.relative_to(root).parts[:1]}
    return sorted(found, key=lambda f: _job_sort_key(str(f.relative_to(root))))


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per job under `root`: job, status, error, overrides and flattened metrics."""
    rows = []
    for folder in job_folders(root):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        status = _read_json(folder / STATUS_FILE) or {}
        overrides = (
            yaml.safe_load(overrides_file.read_text())
            if overrides_file.is_file()
            else status.get("overrides", [])
        )
        metrics = _read_json(folder / "metrics.json")
        state = status.get("status") or ("COMPLETED" if metrics is not None else "INTERRUPTED")
        row: dict[str, Any] = {
            "job": str(folder.relative_to(root)) or ".",
            "status": state,
            "error": status.get("error") or status.get("reason") or "",
            "overrides": list(overrides or []),
            "value": status.get("value"),
        }
        row.update(flatten(metrics or {}))
        rows.append(row)
    return rows


def swept_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The override keys whose value differs between jobs (in first-seen order)."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for override in row["overrides"]:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return [k for k, v in values.items() if len(v) > 1 or any(_missing(r, k) for r in rows)]


def _missing(row: dict[str, Any], key: str) -> bool:
    return not any(o.partition("=")[0] == key for o in row["overrides"])


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """Whether `a` is at least as good as `b` in every objective and better in one."""
    better = False
    for x, y, up in zip(a, b, maximize):
        if (x < y) if up else (x > y):
            return False
        better |= (x > y) if up else (x < y)
    return better


def pareto_set(points: Sequence[Sequence[float] | None], maximize: Sequence[bool]) -> list[bool]:
    """For each point (None: no values), whether no other point dominates it."""
    valid = [p for p in points if p is not None]
    return [p is not None and not any(dominates(q, p, maximize) for q in valid) for p in points]


def parse_objectives(text: str) -> list[tuple[str, bool]]:
    """`test.acc:max,test.latency_ms:min` -> [(column, maximize), ...]."""
    objectives = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, direction = item.rpartition(":")
        if not name or direction not in ("max", "min"):
            raise ValueError(
                f"--objectives item {item!r} is not valid: give metric:max or metric:min, "
                "e.g. test.acc:max,test.latency_ms:min"
            )
        objectives.append((column_of(name), direction == "max"))
    return objectives


def sweep_objectives(root: Path) -> list[tuple[str, bool]]:
    """The objectives an Optuna sweep optimized, from its optimization_results.yaml."""
    path = root / "optimization_results.yaml"
    if not path.is_file():
        return []
    results = yaml.safe_load(path.read_text()) or {}
    names, directions = results.get("optimized_metric"), results.get("direction")
    if names is None or directions is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    directions = [directions] if isinstance(directions, str) else list(directions)
    return [(column_of(n), d == "maximize") for n, d in zip(names, directions)]


def objective_values(row: dict[str, Any], objectives: Sequence[tuple[str, bool]]) -> Any:
    """The row's objective values (from metrics.json, else its returned value), or None."""
    values = [row.get(name) for name, _ in objectives]
    returned = row.get("value")
    missing = any(v is None for v in values)
    if missing and isinstance(returned, list) and len(returned) == len(objectives):
        values = returned
    if row["status"] != "COMPLETED" or any(not _is_number(v) for v in values):
        return None
    return [float(v) for v in values]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def build_table(
    rows: Sequence[dict[str, Any]],
    objectives: Sequence[tuple[str, bool]],
    metrics: Sequence[str],
    sort: str | None,
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the report table (Pareto set marked), sorted by `sort`."""
    keys = swept_keys(rows)
    in_front = pareto_set(
        [objective_values(r, objectives) for r in rows], [m for _, m in objectives]
    )
    names = [n for n, _ in objectives]
    extra = [m for m in metrics if m not in names and any(m in r for r in rows)]
    columns = ["job", "status", *keys, *names, *extra]
    if len(objectives) > 1:
        columns.append("pareto")
    columns.append("error")
    table = []
    for row, front in zip(rows, in_front):
        values = {o.partition("=")[0]: _number(o.partition("=")[2]) for o in row["overrides"]}
        line = [row["job"], row["status"], *(values.get(k) for k in keys)]
        line += [row.get(c) for c in (*names, *extra)]  # None: no value
        if len(objectives) > 1:
            line.append("yes" if front else "")
        line.append(row["error"])
        table.append(line)
    order = sort or (names[0] if names else None)
    if order in columns:
        index = columns.index(order)
        maximize = dict(objectives).get(order, True)
        numbers = [r for r in table if _is_number(r[index])]
        numbers.sort(key=lambda r: r[index], reverse=maximize)
        table = numbers + [r for r in table if not _is_number(r[index])]
    return columns, table


def _number(text: str) -> Any:
    """An override's value as a number when it is one (for formatting and sorting)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")[:120]


def markdown(columns: Sequence[str], table: Sequence[Sequence[Any]]) -> str:
    """The table as GitHub markdown."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def plot_pareto(
    rows: Sequence[dict[str, Any]], objectives: Sequence[tuple[str, bool]], path: Path
) -> Path:
    """The first objective against each other one, Pareto set highlighted, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [objective_values(r, objectives) for r in rows]
    front = pareto_set(points, [m for _, m in objectives])
    (y_name, y_max), others = objectives[0], objectives[1:]
    fig, axes = plt.subplots(1, len(others), figsize=(5.5 * len(others), 4.5), squeeze=False)
    for ax, (x_name, x_max) in zip(axes[0], others):
        x_index = objectives.index((x_name, x_max))
        for in_front, color, label in ((False, "0.6", "dominated"), (True, "C3", "Pareto set")):
            chosen = [(p, r) for p, r, f in zip(points, rows, front) if p and f == in_front]
            ax.scatter(
                [p[x_index] for p, _ in chosen],
                [p[0] for p, _ in chosen],
                c=color,
                label=label,
                zorder=3 if in_front else 2,
            )
            for p, r in chosen if in_front else []:
                ax.annotate(
                    r["job"],
                    (p[x_index], p[0]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
        ax.set_xlabel(f"{x_name} ({'higher' if x_max else 'lower'} is better)")
        ax.set_ylabel(f"{y_name} ({'higher' if y_max else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Pareto set: {sum(front)} of {sum(p is not None for p in points)} jobs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_history(
    rows: Sequence[dict[str, Any]], objectives: Sequence[tuple[str, bool]], path: Path
) -> Path:
    """Each objective per job in launch order, with the best value so far, saved to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(objectives), figsize=(5 * len(objectives), 4), squeeze=False)
    for index, (ax, (name, maximize)) in enumerate(zip(axes[0], objectives)):
        xs, ys = [], []
        for position, row in enumerate(rows):
            values = objective_values(row, objectives)
            if values is not None:
                xs.append(position)
                ys.append(values[index])
        best = [max(ys[: i + 1]) if maximize else min(ys[: i + 1]) for i in range(len(ys))]
        ax.scatter(xs, ys, c="C0", label="job")
        ax.step(xs, best, where="post", c="C3", label="best so far")
        ax.set_xlabel("job (launch order)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Optimization history")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def wandb_settings(root: Path, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """W&B project, entity and mode of the sweep's jobs (None if they did not log to W&B)."""
    for row in rows:
        config_file = root / row["job"] / ".hydra" / "config.yaml"
        if not config_file.is_file():
            continue
        logger = (yaml.safe_load(config_file.read_text()) or {}).get("logger") or {}
        wandb_cfg = logger.get("wandb")
        if wandb_cfg:
            return {
                "project": wandb_cfg.get("project") or "slimlab",
                "entity": wandb_cfg.get("entity"),
                "mode": "offline" if wandb_cfg.get("offline") else "online",
            }
    return None


def log_to_wandb(
    settings: dict[str, Any],
    group: str,
    columns: Sequence[str],
    table: Sequence[Sequence[Any]],
    images: dict[str, Path],
    out: Path,
) -> str:
    """Log the table and plots as one run of job type `sweep_report` in the sweep's group."""
    import wandb

    run = wandb.init(
        project=settings["project"],
        entity=settings["entity"],
        mode=settings["mode"],
        group=group,
        job_type="sweep_report",
        name=f"{group}-report",
        dir=str(out),
        reinit=True,
    )
    data = [[c if c is None or _is_number(c) else _cell(c) for c in row] for row in table]
    payload: dict[str, Any] = {"sweep/jobs": wandb.Table(columns=list(columns), data=data)}
    payload.update({f"sweep/{name}": wandb.Image(str(path)) for name, path in images.items()})
    run.log(payload)
    run.finish()
    wandb.teardown()  # ends W&B's service, which writes out the offline run before it exits
    return run.dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a sweep folder, or any folder holding runs")
    parser.add_argument(
        "--objectives",
        default=None,
        help="metric:max|min,... (default: the sweep's optimized_metric and direction)",
    )
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="more columns")
    parser.add_argument("--sort", default=None, help="column to sort by (default: objective 1)")
    parser.add_argument("--out", type=Path, default=None, help="default: <root>/report")
    parser.add_argument(
        "--wandb", choices=("auto", "off"), default="auto", help="auto: if the jobs used W&B"
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder: give a sweep or run folder", file=sys.stderr)
        return 2
    rows = collect(args.root)
    if not rows:
        print(f"error: no job folder under {args.root}: has any job started?", file=sys.stderr)
        return 2
    try:
        objectives = (
            parse_objectives(args.objectives) if args.objectives else sweep_objectives(args.root)
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = [m for m in args.metrics.split(",") if m]
    columns, table = build_table(rows, objectives, metrics, args.sort)
    out = args.out or args.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(columns, table)
    (out / "jobs.md").write_text(text)
    with open(out / "jobs.csv", "w", newline="") as f:
        csv.writer(f).writerows([columns, *table])
    print(text)
    images: dict[str, Path] = {}
    if objectives and any(objective_values(r, objectives) for r in rows):
        images["history"] = plot_history(rows, objectives, out / "history.png")
        if len(objectives) > 1:
            images["pareto"] = plot_pareto(rows, objectives, out / "pareto.png")
    counts = {
        s: sum(r["status"] == s for r in rows) for s in dict.fromkeys(r["status"] for r in rows)
    }
    print(
        f"{len(rows)} jobs {counts}; wrote {', '.join(sorted(p.name for p in out.iterdir()))} "
        f"to {out}"
    )
    settings = wandb_settings(args.root, rows) if args.wandb == "auto" else None
    if settings is not None:
        group = args.root.resolve().name
        run_dir = log_to_wandb(settings, group, columns, table, images, out)
        print(f"logged to W&B group {group!r} ({settings['mode']}): {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
