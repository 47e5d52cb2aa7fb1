"""Training-loop benchmark: SlimLab's run through Lightning vs a hand-written PyTorch loop.

    python scripts/bench/bench_loop.py                  # results in logs/bench/loop.json
    python scripts/bench/bench_loop.py --update-docs    # also the tables in docs/performance.md
    python scripts/bench/bench_loop.py --parts loop --cases digits --rounds 3   # a quick look
    python scripts/bench/bench_loop.py --parts profile  # cProfile of one digits run
    python scripts/bench/bench_loop.py --docs-from logs/bench/loop.json  # tables from a result

What it measures, each part in its own section of the results:

1. `loop`: the same work done three ways, in this one process, on one thread
   (`torch.set_num_threads(1)`), interleaved (each round runs every variant once, in a rotated
   order) after one warm-up run of each; medians over `--rounds`:
   - `plain`: a hand-written PyTorch loop: the same datamodule's datasets, the same net
     (built from the same config), the datamodule's own normalize/augment modules on every
     batch, AdamW, the cosine schedule stepped per epoch, running loss and accuracy sums,
     one validation pass per epoch (best weights kept in memory), one test pass on the best
     weights.
   - `slimlab`: `slimlab.train.train` on the composed config, as a user runs it (default
     callbacks: both checkpoints, the RNG state, the model summary; the CSV logger;
     metrics.json; test on the best checkpoint), with early stopping and the progress bar off.
   - `stripped`: the same without checkpoints and logger (and so testing the last weights).
   Cases: `digits` (the default config, 5 epochs) and `resnet20` (ResNet-20 on synthetic
   3x32x32 uint8 images written as CIFAR-10's own files, normalize + crop + flip per batch).
   Ratio = plain seconds / variant seconds (1.0: no overhead), of the medians.
2. `startup`: `python train.py trainer.max_epochs=5` on digits as a user runs it, split into
   interpreter + imports, set-up (compose, run folder, building, config print) and the run
   (fit + test, metrics.json's `wall_time_s`); and `import slimlab.train` against
   `import lightning` alone, fresh processes, interleaved. Lists any heavy optional package
   (onnx, onnxruntime, transformers, bitsandbytes, wandb, optuna) a default run imported.
3. `threads`: the digits run (5 epochs, as users run it) at each thread count, at `threads=auto`
   (SlimLab's default) and at torch's own default, on the machine as it is and with one
   competing busy process that this script starts and stops. Runs in a child process without
   OMP_NUM_THREADS/MKL_NUM_THREADS, so `auto` and torch's default take their real paths.
4. `profile` (only when asked): cProfile of one digits run, as users run it; the top functions
   by total time and by cumulative time go to logs/bench/loop_profile.txt.

Results go to logs/bench/loop.json; docs/performance.md changes only with --update-docs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import os
import pickle
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "performance.md"
HEAVY = ("onnx", "onnxruntime", "transformers", "bitsandbytes", "wandb", "optuna")

import slimlab.utils.resolvers  # noqa: E402,F401  (registers ${slimlab.*})
from slimlab.train import train  # noqa: E402
from slimlab.utils.compose import compose_config  # noqa: E402
from slimlab.utils.run_files import (  # noqa: E402
    bench_results_path,
    replace_doc_block,
    write_json_atomic,
)

# every SlimLab run: early stopping and the progress bar off (the measurement)
COMMON = (
    "++threads=1",  # ++: also composes on configs from before the key existed
    "callbacks.early_stopping=null",
    "callbacks.rich_progress_bar=null",
    "+trainer.enable_progress_bar=false",
)
# what `stripped` leaves out beyond that: checkpoints and loggers
STRIPPED = (
    "callbacks.model_checkpoint=null",
    "callbacks.model_checkpoint_last=null",
    "+trainer.enable_checkpointing=false",
    "logger=none",
)
# one item of the user's run left out at a time (--ablations): what each costs
ABLATIONS = {
    "checkpoints": STRIPPED[:3],
    "last.ckpt": ("callbacks.model_checkpoint_last=null",),
    "logger": ("logger=none",),
    "model summary": ("callbacks.model_summary=null", "+trainer.enable_model_summary=false"),
    "RNG-state callback": ("callbacks.rng_state=null",),
    "sanity check": ("+trainer.num_sanity_val_steps=0",),
    "test": ("test=false",),
}


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def write_synthetic_cifar(folder: Path, images: int, seed: int = 0) -> Path:
    """CIFAR-10's own files (5 training batches + test batch) holding random uint8 images."""
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    per_batch = images // 5
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = per_batch if name != "test_batch" else max(per_batch // 4, 10)
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(batches / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def case_overrides(case: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    """The config overrides of a benchmark case (on top of `COMMON`)."""
    if case == "digits":
        return [f"trainer.max_epochs={args.digits_epochs}"]
    if case == "resnet20":
        data_dir = workdir / "cifar"
        if not data_dir.exists():
            write_synthetic_cifar(data_dir, args.resnet_images)
        return [
            "data=cifar10",
            "model=resnet",
            f"data.data_dir={data_dir}",
            "data.download=false",
            f"data.batch_size={args.resnet_batch}",
            f"trainer.max_epochs={args.resnet_epochs}",
        ]
    raise ValueError(f"unknown case {case!r}")


# -- the hand-written loop ---------------------------------------------------------------------


def plain_run(cfg: Any) -> dict[str, Any]:
    """Train and test `cfg`'s net on `cfg`'s data with a plain PyTorch loop; return counts."""
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data)
    train_set, val_set, test_set = datamodule.build_datasets()
    normalize, augment = datamodule.normalize, datamodule.augment
    net = instantiate(cfg.model.net)
    opt_cfg, epochs = cfg.model.optimizer, int(cfg.trainer.max_epochs)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    batch = int(cfg.data.batch_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=batch, shuffle=True, generator=generator)
    val_loader = DataLoader(val_set, batch_size=batch)
    test_loader = DataLoader(test_set, batch_size=batch)

    def prepare(x: torch.Tensor, training: bool) -> torch.Tensor:
        if normalize is not None:
            x = normalize(x)
        if augment is not None and training:
            x = augment(x)
        return x

    def evaluate(loader: DataLoader) -> tuple[float, float]:
        net.eval()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        with torch.no_grad():
            for x, y in loader:
                logits = net(prepare(x, training=False))
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
        return float(loss_sum) / seen, float(correct) / seen

    steps, best_acc, best_state = 0, -1.0, None
    for _ in range(epochs):
        net.train()
        loss_sum, correct, seen = torch.zeros(()), torch.zeros((), dtype=torch.long), 0
        for x, y in train_loader:
            logits = net(prepare(x, training=True))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            steps += 1
        scheduler.step()
        _, val_acc = evaluate(val_loader)
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    _, test_acc = evaluate(test_loader)
    return {"steps": steps, "test_acc": test_acc}


def slimlab_run(cfg: Any) -> dict[str, Any]:
    """`slimlab.train.train(cfg)`; return the training steps and the test accuracy."""
    metrics, objects = train(cfg)
    return {"steps": objects["trainer"].global_step, "test_acc": metrics.get("test/acc")}


# -- part 1: the loop --------------------------------------------------------------------------


def loop_case(case: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every variant of `case`: a warm-up run each, then `args.rounds` interleaved rounds."""
    base = [*COMMON, *case_overrides(case, args, workdir)]
    variants: dict[str, tuple[Callable[[Any], dict], list[str]]] = {
        "plain": (plain_run, base),
        "slimlab": (slimlab_run, base),
        "stripped": (slimlab_run, [*base, *STRIPPED]),
    }
    if args.ablations and case == "digits":
        variants.update(
            {
                f"without {item}": (slimlab_run, [*base, *extra])
                for item, extra in ABLATIONS.items()
            }
        )
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    info: dict[str, dict] = {}
    counter = 0

    def run_once(name: str) -> float:
        nonlocal counter
        counter += 1
        fn, overrides = variants[name]
        cfg = compose_config(overrides, workdir / f"{case}_{counter}")
        with contextlib.redirect_stdout(io.StringIO()):  # the model summary's table
            start, start_cpu = time.perf_counter(), time.process_time()
            info[name] = fn(cfg)
            cpu[name].append(time.process_time() - start_cpu)
            return time.perf_counter() - start

    names = list(variants)
    for name in names:  # warm-up: lazy imports, allocator, first Trainer
        run_once(name)
        cpu[name].clear()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(run_once(name))
        print(
            f"{case} round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names),
            file=sys.stderr,
        )
    plain = statistics.median(times["plain"])
    result: dict[str, Any] = {"variants": {}}
    for name in names:
        median = statistics.median(times[name])
        per_round = [p / t for p, t in zip(times["plain"], times[name], strict=True)]
        result["variants"][name] = {
            "seconds": times[name],
            "median_s": median,
            "steps": info[name]["steps"],
            "steps_per_s": info[name]["steps"] / median,
            "ratio": plain / median,
            "ratio_range": [min(per_round), max(per_round)],
            "cpu_seconds": cpu[name],
            "cpu_ratio": statistics.median(cpu["plain"]) / statistics.median(cpu[name]),
            "test_acc": info[name]["test_acc"],
        }
    return result


def loop_table(results: dict[str, Any], args: argparse.Namespace) -> str:
    names = {
        "digits": f"digits, SmallCNN, {args.digits_epochs} epochs",
        "resnet20": f"ResNet-20, synthetic 3x32x32, batch {args.resnet_batch}",
    }
    labels = {
        "plain": "plain PyTorch loop",
        "slimlab": "SlimLab, as users run it",
        "stripped": "SlimLab, no checkpoints/logger",
    }
    lines = [
        "| case | variant | steps | median s | steps/s | ratio plain/variant (range) "
        "| CPU-time ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, result in results.items():
        for name, v in result["variants"].items():
            lo, hi = v["ratio_range"]
            lines.append(
                f"| {names[case]} | {labels.get(name, name)} | {v['steps']} | {v['median_s']:.2f} "
                f"| {v['steps_per_s']:.1f} | {v['ratio']:.2f} ({lo:.2f}-{hi:.2f}) "
                f"| {v['cpu_ratio']:.2f} |"
            )
    return "\n".join(lines)


# -- part 2: start-up --------------------------------------------------------------------------

CHILD_ENV_DROP = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLIMLAB_USER_OMP_NUM_THREADS")


def child_env(**extra: str) -> dict[str, str]:
    """This environment without the thread settings (so `auto` takes its real path)."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    env.update(extra)
    return env


def timed_python(code: str, env: dict[str, str] | None = None) -> float:
    """Wall seconds of a fresh `python -c code`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def cli_train(overrides: list[str], root: Path, env: dict[str, str]) -> dict[str, Any]:
    """`python train.py <overrides>` in a fresh process with its logs under `root`: its wall
    seconds, metrics.json, and the heavy optional packages it imported."""
    marker = root / "heavy.json"
    code = (
        "import atexit, json, runpy, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write(json.dumps("
        f"[m for m in {HEAVY!r} if m in sys.modules])))\n"
        f"sys.argv = ['train.py', *{overrides!r}]\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    before = set(root.glob("logs/**/metrics.json"))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=ROOT,
        env={**env, "SLIMLAB_ROOT": str(root)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    (summary,) = set(root.glob("logs/**/metrics.json")) - before
    return {
        "seconds": seconds,
        "metrics": json.loads(summary.read_text()),
        "heavy": json.loads(marker.read_text()),
    }


def startup(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Imports, set-up and run of `python train.py` on digits; slimlab's imports vs lightning's."""
    env = child_env(OMP_NUM_THREADS="1")
    codes = {
        "python": "pass",
        "lightning": "import lightning",
        "slimlab.train": "import hydra, slimlab.train, slimlab.utils.task",
    }
    imports: dict[str, list[float]] = {name: [] for name in codes}
    runs: list[dict[str, Any]] = []
    overrides = [f"trainer.max_epochs={args.digits_epochs}", "callbacks.early_stopping=null"]
    for r in range(args.rounds):
        names = list(codes)[r % 3 :] + list(codes)[: r % 3]
        for name in names:
            imports[name].append(timed_python(codes[name], env))
        runs.append(cli_train(overrides, workdir / "startup", env))
    med = {name: statistics.median(v) for name, v in imports.items()}
    total = statistics.median(r["seconds"] for r in runs)
    run = statistics.median(r["metrics"]["wall_time_s"] for r in runs)
    interpreter = med["python"]
    own = med["slimlab.train"] - med["lightning"]
    return {
        "imports_median_s": med,
        "slimlab_imports_over_lightning": own / (med["lightning"] - interpreter),
        "cli_total_s": total,
        "cli_run_s": run,
        "cli_imports_s": med["slimlab.train"],
        "cli_setup_s": total - run - med["slimlab.train"],
        "heavy_imported": sorted({m for r in runs for m in r["heavy"]}),
        "threads": runs[0]["metrics"].get("threads"),
    }


# -- part 3: threads ---------------------------------------------------------------------------


@contextlib.contextmanager
def competing_process(on: bool) -> Any:
    """One busy Python process (a spinning loop) while the block runs, when `on`."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def threads_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The digits CLI run at 1..cores threads, `auto` and torch's default; idle and contended."""
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    torch_default = int(out.stdout)
    settings = {f"threads={n}": f"threads={n}" for n in range(1, (os.cpu_count() or 1) + 1)}
    settings["threads=auto (default)"] = "threads=auto"
    settings[f"torch default ({torch_default})"] = f"threads={torch_default}"
    base = [f"trainer.max_epochs={args.digits_epochs}", "callbacks.early_stopping=null"]
    result: dict[str, Any] = {"torch_default": torch_default, "conditions": {}}
    for condition, busy in (("machine as it is", False), ("one competing process", True)):
        seconds: dict[str, list[float]] = {name: [] for name in settings}
        used: dict[str, int] = {}
        with competing_process(busy):
            for r in range(args.thread_rounds):
                names = list(settings)[r % len(settings) :] + list(settings)[: r % len(settings)]
                for name in names:
                    run = cli_train([*base, settings[name]], workdir / "threads", env)
                    seconds[name].append(run["seconds"])
                    used[name] = run["metrics"]["threads"]
                print(
                    f"threads {condition} round {r + 1}: "
                    + ", ".join(f"{n} {seconds[n][-1]:.1f}s" for n in settings),
                    file=sys.stderr,
                )
        med = {name: statistics.median(v) for name, v in seconds.items()}
        fastest = min(med.values())
        result["conditions"][condition] = {
            name: {
                "seconds": seconds[name],
                "median_s": med[name],
                "threads": used[name],
                "over_fastest": med[name] / fastest,
            }
            for name in settings
        }
    return result


def threads_table(result: dict[str, Any]) -> str:
    lines = [
        "| condition | setting | threads used | median s (whole `python train.py`) | / fastest |",
        "|---|---|---:|---:|---:|",
    ]
    for condition, rows in result["conditions"].items():
        for name, v in rows.items():
            lines.append(
                f"| {condition} | {name} | {v['threads']} | {v['median_s']:.1f} "
                f"| {v['over_fastest']:.2f} |"
            )
    return "\n".join(lines)


# -- part 4: the profile -----------------------------------------------------------------------


def profile_digits(args: argparse.Namespace, workdir: Path, dump: Path) -> str:
    """cProfile of one digits run as users run it (after a warm-up run): the top functions;
    the raw statistics go to `dump` (open with `python -m pstats`)."""
    overrides = [*COMMON, *case_overrides("digits", args, workdir)]
    with contextlib.redirect_stdout(io.StringIO()):
        train(compose_config(overrides, workdir / "profile_warmup"))
        cfg = compose_config(overrides, workdir / "profile")
        profiler = cProfile.Profile()
        profiler.enable()
        train(cfg)
        profiler.disable()
    profiler.dump_stats(dump)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(80)
    # the template's own code paths: callbacks, loggers, checkpoints, logging, loops
    stats.sort_stats("cumulative").print_stats("callbacks|loggers|logger_connector|slimlab", 60)
    return out.getvalue()


def startup_table(s: dict[str, Any]) -> str:
    med = s["imports_median_s"]
    rows = [
        ("`python train.py` on digits, whole process", s["cli_total_s"]),
        ("… imports (interpreter, hydra, slimlab.train and what it imports)", s["cli_imports_s"]),
        ("… set-up (compose, run folder, building, config print, exit)", s["cli_setup_s"]),
        ("… the run: fit + test (metrics.json's wall_time_s)", s["cli_run_s"]),
        ("bare interpreter (`python -c pass`)", med["python"]),
        ("`import lightning`", med["lightning"]),
        ("`import hydra, slimlab.train, slimlab.utils.task`", med["slimlab.train"]),
    ]
    lines = ["| what | median s |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in rows]
    heavy = ", ".join(s["heavy_imported"]) or "none"
    lines += [
        "",
        f"SlimLab's own imports over `import lightning` alone (interpreter excluded): "
        f"{100 * s['slimlab_imports_over_lightning']:.0f}%. Heavy optional packages a default "
        f"run imported: {heavy}.",
    ]
    return "\n".join(lines)


def machine_line(m: dict[str, Any], parts: str) -> str:
    return (
        f"- {parts}: {m['date']}, {m['cpus']} CPUs ({m['cpu']}), torch {m['torch']}, load "
        f"average {m['load_before']} before and {m['load_after']} after, {m['seconds']} s"
    )


def update_docs(runs: list[dict[str, Any]]) -> None:
    """Write the tables of `runs` (results of this script) into docs/performance.md."""
    blocks: dict[str, str] = {}
    machine = []
    for results in runs:
        done = [part for part in ("loop", "startup", "threads") if part in results]
        if "loop" in results:  # the rows of several results files go into one table
            rows = results["loop_table"].splitlines()
            blocks["loop"] = (
                "\n".join([blocks["loop"], *rows[2:]]) if "loop" in blocks else "\n".join(rows)
            )
            done[0] = "loop (" + ", ".join(results["loop"]) + ")"
        if "startup" in results:
            blocks["startup"] = startup_table(results["startup"])
        if "threads" in results:
            blocks["threads"] = results["threads_table"]
        machine.append(machine_line(results["machine"], ", ".join(done)))
    blocks["machine"] = "\n".join(machine)
    for name, text in blocks.items():
        replace_doc_block(DOC, f"<!-- bench_loop:{name} -->", f"<!-- /bench_loop:{name} -->", text)
    print(f"wrote {DOC}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        default="loop,startup,threads",
        help="comma-separated: loop, startup, threads, profile",
    )
    parser.add_argument("--cases", default="digits,resnet20", help="loop cases")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    parser.add_argument("--digits-epochs", type=int, default=5)
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--resnet-epochs", type=int, default=2)
    parser.add_argument(
        "--resnet-images",
        type=int,
        default=3600,
        help="synthetic training images (10%% held out for validation)",
    )
    parser.add_argument(
        "--thread-rounds",
        type=int,
        default=2,
        help="interleaved rounds per condition of the threads part",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="digits: also the user's run without one item at a time",
    )
    parser.add_argument("--update-docs", action="store_true", help="rewrite docs/performance.md")
    parser.add_argument("--out", type=Path, default=bench_results_path("loop"))
    parser.add_argument(
        "--docs-from",
        type=Path,
        nargs="+",
        help="measure nothing: write the tables of these results files into the docs",
    )
    args = parser.parse_args()
    if args.docs_from:
        update_docs([json.loads(path.read_text()) for path in args.docs_from])
        return
    parts = set(args.parts.split(","))
    torch.set_num_threads(1)
    started, load_before = time.time(), load_average()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "loop" in parts:
            loop = {case: loop_case(case, args, workdir) for case in args.cases.split(",")}
            results["loop"] = loop
            results["loop_table"] = loop_table(loop, args)
            print(results["loop_table"])
        if "startup" in parts:
            results["startup"] = startup(args, workdir)
            print(json.dumps(results["startup"], indent=1))
        if "threads" in parts:
            results["threads"] = threads_part(args, workdir)
            results["threads_table"] = threads_table(results["threads"])
            print(results["threads_table"])
        if "profile" in parts:
            path = args.out.with_name("loop_profile.txt")
            path.parent.mkdir(parents=True, exist_ok=True)
            text = profile_digits(args, workdir, path.with_suffix(".prof"))
            path.write_text(text)
            print(f"wrote {path}", file=sys.stderr)
    results["machine"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "load_before": load_before,
        "load_after": load_average(),
        "seconds": round(time.time() - started),
    }
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.update_docs:
        update_docs([results])


if __name__ == "__main__":
    main()
