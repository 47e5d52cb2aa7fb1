"""Distillation benchmark on digits: student alone vs student + KD, then the full recipe.

    python scripts/bench/bench_distillation.py                 # 8 seeds + recipe, ~5 min
    python scripts/bench/bench_distillation.py --seeds 0 1 2 --skip-recipe   # 3 seeds only
    python scripts/bench/bench_distillation.py --skip-recipe   # the KD comparison only

1. Trains the teacher (experiment=digits_cnn, the dense fp32 CNN) once.
2. For each seed, trains the narrow student of experiment=digits_distill alone
   (compression.distill=null) and with KD from that teacher; reports the share of the
   student-to-teacher test-accuracy gap that KD closes. Seeds 0-7 by default: on 270 test
   images one seed's accuracy moves by a few images, so 3 seeds do not separate a
   2-image effect from noise.
3. Runs the showcase recipe (experiment=digits_compress: prune while distilling from the
   teacher, then QAT) from the same teacher, checks that its int8 checkpoint reloads, and
   reports its accuracy, params, MACs, size and latency against the dense fp32 teacher.

Every run uses the same data split (data.seed fixed): the seed changes only the training,
so the teacher never saw the students' test images. Torch runs on --threads threads (1 by
default: the latencies are single-thread CPU numbers). Results go to --out as JSON and are
printed as markdown tables (copied into docs/distillation.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*})
from slimlab.train import train
from slimlab.utils.compose import QUIET, compose_config
from slimlab.utils.run_files import bench_results_path


def run(overrides: list[str], out: Path) -> dict[str, Any]:
    """Train + test one config; return metrics.json's content and the wall time."""
    start = time.perf_counter()
    cfg = compose_config([*QUIET, *overrides], out)
    train(cfg)
    summary = json.loads((out / "run" / "metrics.json").read_text())
    summary["bench_wall_s"] = round(time.perf_counter() - start, 1)
    return summary


def kd_comparison(args: argparse.Namespace, work: Path, teacher: dict) -> dict[str, Any]:
    student = ["experiment=digits_distill", f"data.seed={args.data_seed}", *args.student]
    if args.epochs is not None:
        student.append(f"trainer.max_epochs={args.epochs}")
    rows = []
    for seed in args.seeds:
        alone = run([*student, f"seed={seed}", "compression.distill=null"], work / f"alone_{seed}")
        kd = run(
            [
                *student,
                f"seed={seed}",
                f"compression.distill.teacher_ckpt={teacher['best_checkpoint']}",
            ],
            work / f"kd_{seed}",
        )
        rows.append(
            {
                "seed": seed,
                "alone_acc": alone["test"]["acc"],
                "kd_acc": kd["test"]["acc"],
                "student_params": kd["params"],
                "alone_wall_s": alone["bench_wall_s"],
                "kd_wall_s": kd["bench_wall_s"],
            }
        )
        print(f"seed {seed}: alone {rows[-1]['alone_acc']:.4f}  kd {rows[-1]['kd_acc']:.4f}")
    alone = [r["alone_acc"] for r in rows]
    kd = [r["kd_acc"] for r in rows]
    gap = teacher["test"]["acc"] - statistics.mean(alone)
    return {
        "rows": rows,
        "alone_mean": statistics.mean(alone),
        "kd_mean": statistics.mean(kd),
        "alone_std": statistics.stdev(alone) if len(rows) > 1 else 0.0,
        "kd_std": statistics.stdev(kd) if len(rows) > 1 else 0.0,
        "gap_closed": (statistics.mean(kd) - statistics.mean(alone)) / gap if gap > 0 else None,
        "kd_better": sum(k > a for k, a in zip(kd, alone, strict=True)),
        "kd_worse": sum(k < a for k, a in zip(kd, alone, strict=True)),
    }


def recipe(args: argparse.Namespace, work: Path, teacher: dict) -> dict[str, Any]:
    from slimlab.models.base import load_module

    summary = run(
        [
            "experiment=digits_compress",
            f"data.seed={args.data_seed}",
            f"seed={args.seeds[0]}",
            f"compression.distill.teacher_ckpt={teacher['best_checkpoint']}",
            *args.recipe,
        ],
        work / "recipe",
    )
    int8 = load_module(summary["best_checkpoint"])  # the int8 checkpoint reloads ...
    with torch.no_grad():
        int8.net(int8.example_input_array)  # ... and runs
    return summary


def tables(result: dict[str, Any]) -> str:
    teacher, kd = result["teacher"], result["kd"]
    lines = [
        f"Teacher: digits_cnn, {teacher['params']:,} params, test acc "
        f"{teacher['test']['acc']:.4f}. Student: {kd['rows'][0]['student_params']:,} params.",
        "",
        "| seed | student alone | student + KD |",
        "|---:|---:|---:|",
    ]
    for r in kd["rows"]:
        lines.append(f"| {r['seed']} | {r['alone_acc']:.4f} | {r['kd_acc']:.4f} |")
    lines.append(
        f"| mean ± std | {kd['alone_mean']:.4f} ± {kd['alone_std']:.4f} | "
        f"{kd['kd_mean']:.4f} ± {kd['kd_std']:.4f} |"
    )
    if kd["gap_closed"] is not None:
        lines += ["", f"Share of the student-to-teacher gap closed by KD: {kd['gap_closed']:.0%}"]
    lines.append(
        f"KD better in {kd['kd_better']} of {len(kd['rows'])} seeds, worse in {kd['kd_worse']}."
    )
    if "recipe" in result:
        summary = result["recipe"]
        section = summary["compression"]["distillation"]
        before, after = section["vs_teacher"]["before"], section["vs_teacher"]["after"]
        lines += [
            "",
            "| | dense fp32 teacher | pruned + distilled int8 student | ratio |",
            "|---|---:|---:|---:|",
            f"| test acc | {section['teacher_test_acc']:.4f} | {summary['test']['acc']:.4f} | |",
        ]
        for key, name in [("params", "params"), ("macs", "MACs / sample")]:
            ratio = after[key] / before[key]
            lines.append(f"| {name} | {before[key]:,} | {after[key]:,} | {ratio:.2f}x |")
        ratio = after["size_bytes"] / before["size_bytes"]
        lines.append(
            f"| size on disk | {before['size_bytes'] / 1024:.1f} KiB | "
            f"{after['size_bytes'] / 1024:.1f} KiB | {ratio:.2f}x |"
        )
        for b in (1, 64):
            key = f"latency_ms_b{b}"
            if key in before and key in after:
                lines.append(
                    f"| latency, batch {b} | {before[key]:.3f} ms | {after[key]:.3f} ms | "
                    f"{before[key] / after[key]:.2f}x faster |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--data-seed", type=int, default=42, help="fixed train/val/test split")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="student epochs (default: experiment=digits_distill's)",
    )
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPU)")
    parser.add_argument("--student", nargs="*", default=[], help="extra student overrides")
    parser.add_argument("--recipe", nargs="*", default=[], help="extra recipe overrides")
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--out", type=Path, default=bench_results_path("distillation"))
    parser.add_argument("--work", type=Path, default=None, help="run folders (default: temp)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        teacher = run(
            [
                "experiment=digits_cnn",
                f"data.seed={args.data_seed}",
                f"seed={args.seeds[0]}",
                f"trainer.max_epochs={args.teacher_epochs}",
            ],
            work / "teacher",
        )
        print(f"teacher: {teacher['test']['acc']:.4f}")
        result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
        result["teacher"] = teacher
        result["kd"] = kd_comparison(args, work, teacher)
        if not args.skip_recipe:
            result["recipe"] = recipe(args, work, teacher)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
    print(tables(result))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
