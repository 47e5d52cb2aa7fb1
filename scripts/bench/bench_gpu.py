"""GPU training throughput: bf16-mixed vs fp32, and SlimLab's loop vs a plain PyTorch loop.

    python scripts/bench/bench_gpu.py                  # on the GPU, ~1-2 min -> logs/bench/
    python scripts/bench/bench_gpu.py --update-docs    # ... and the table in docs/gpu.md
    python scripts/bench/bench_gpu.py --from-json <dir>/bench_gpu.json --update-docs
                                                       # a result fetched from a GPU machine
    python scripts/bench/bench_gpu.py --device cpu --steps 3 --warmup 1 --batch-size 8 --repeats 1
                                                       # the same code path on CPU, in seconds

The work: ResNet-20 (configs/model/resnet20.yaml) trained with the experiment=cifar10_resnet20
recipe (SGD), batch 256, on synthetic CIFAR-shaped data (random uint8 3x32x32 images and
labels, held in memory), normalised and augmented on the device by configs/data/cifar10.yaml's
own transforms. Two loops do it:

- "slimlab": `trainer.fit` on the module, callbacks, loggers and trainer that the composed
  config builds, as `python train.py experiment=cifar10_resnet20 trainer=gpu` builds them
  (validation cut to one batch, after the timed steps);
- "plain": a hand-written loop over the same batches: the same network and initial weights,
  optimizer, loss, transforms and autocast, keeping running loss and accuracy sums on the
  device (the module logs both every step).

Each timed window is `--steps` steps after `--warmup` steps, between two synchronizations of
the device. The four variants (2 loops x fp32 / bf16-mixed) run interleaved, `--repeats`
times, in this one process; the median images/s of each is reported, with the ratios
bf16-mixed / fp32 and slimlab / plain (target >= 0.95). Results go to <out>/bench_gpu.json and
bench_gpu.md; `--update-docs` also writes the table into docs/gpu.md (GPU runs only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from slimlab.data.base import ClassificationDataModule
from slimlab.utils.compose import compose_config
from slimlab.utils.instantiate import instantiate_callbacks, instantiate_loggers
from slimlab.utils.run_files import replace_doc_block

ROOT = Path(__file__).resolve().parents[2]

DOC = ROOT / "docs" / "gpu.md"
START, END = "<!-- bench_gpu:start -->", "<!-- bench_gpu:end -->"
PRECISIONS = {"fp32": "32-true", "bf16-mixed": "bf16-mixed"}
LOOPS = ("slimlab", "plain")
TARGET = 0.95  # slimlab / plain


class SyntheticImages(ClassificationDataModule):
    """Random uint8 3x32x32 images and labels in memory: CIFAR-10's shapes, for throughput."""

    num_classes = 10
    input_shape = (3, 32, 32)

    def __init__(self, train_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_size = train_size

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        generator = torch.Generator().manual_seed(0)

        def part(n: int) -> Dataset:
            images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
            return TensorDataset(images, torch.randint(0, 10, (n,), generator=generator))

        return part(self.train_size), part(self.batch_size), part(self.batch_size)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Seconds from the start of step `warmup` to the end of step `warmup + steps - 1`."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = 0.0
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            synchronize(pl_module.device)
            self.seconds = time.perf_counter() - self.start


def compose(device: str, precision: str, args: argparse.Namespace, out: Path) -> DictConfig:
    """The user's config: experiment=cifar10_resnet20 on `device` in `precision`."""
    return compose_config(
        [
            "experiment=cifar10_resnet20",
            f"trainer={'gpu' if device == 'cuda' else 'cpu'}",
            f"trainer.precision={PRECISIONS[precision]}",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=1",
            "+trainer.num_sanity_val_steps=0",
            f"data.batch_size={args.batch_size}",
        ],
        out,
    )


def data_for(cfg: DictConfig, args: argparse.Namespace) -> SyntheticImages:
    """One epoch of exactly warmup + steps batches, with cifar10.yaml's device transforms."""
    return SyntheticImages(
        train_size=args.batch_size * (args.warmup + args.steps),
        batch_size=args.batch_size,
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory,
        seed=cfg.data.seed,
        normalize=instantiate(cfg.data.normalize),
        augment=instantiate(cfg.data.augment),
    )


def slimlab_loop(cfg: DictConfig, args: argparse.Namespace) -> float:
    """Seconds for the timed steps of `trainer.fit`, built from `cfg` as train.py builds it."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.manual_seed(0)
    model = instantiate(cfg.model, _recursive_=False)
    timer = StepTimer(args.warmup, args.steps)
    callbacks = [*instantiate_callbacks(cfg.get("callbacks")), timer]
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(model=model, datamodule=data_for(cfg, args))
    assert timer.seconds is not None, "the timed window did not complete"
    return timer.seconds


def plain_loop(cfg: DictConfig, args: argparse.Namespace, device: torch.device) -> float:
    """Seconds for the same timed steps in a hand-written loop."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.manual_seed(0)
    net = instantiate(cfg.model.net).to(device).train()
    optimizer = instantiate(cfg.model.optimizer)(params=net.parameters())
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.model.label_smoothing)
    bf16 = cfg.trainer.precision == "bf16-mixed"
    data = data_for(cfg, args)
    data.setup("fit")
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    start = 0.0
    for step, (x, y) in enumerate(data.train_dataloader()):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = data.augment(data.normalize(x))  # what the data module does on the device
        if step == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        correct += (logits.argmax(dim=1) == y).sum()
        if step == args.warmup + args.steps - 1:
            synchronize(device)
            return time.perf_counter() - start
    raise AssertionError("the data ran out before the timed window ended")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of every (loop, precision), interleaved `args.repeats` times; medians, ratios."""
    device = torch.device(args.device)
    runs: dict[str, list[float]] = {f"{loop} {p}": [] for p in PRECISIONS for loop in LOOPS}
    images = args.batch_size * args.steps
    with tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            for precision in PRECISIONS:
                for loop in LOOPS:
                    out = Path(workdir) / f"{repeat}_{precision}_{loop}"
                    cfg = compose(args.device, precision, args, out)
                    seconds = (
                        slimlab_loop(cfg, args)
                        if loop == "slimlab"
                        else plain_loop(cfg, args, device)
                    )
                    runs[f"{loop} {precision}"].append(images / seconds)
                    print(f"{loop} {precision}: {images / seconds:,.0f} images/s", file=sys.stderr)
    median = {name: statistics.median(values) for name, values in runs.items()}
    ratios = {
        "bf16-mixed / fp32, slimlab": median["slimlab bf16-mixed"] / median["slimlab fp32"],
        "bf16-mixed / fp32, plain": median["plain bf16-mixed"] / median["plain fp32"],
        **{
            f"slimlab / plain, {p}": median[f"slimlab {p}"] / median[f"plain {p}"]
            for p in PRECISIONS
        },
    }
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "settings": {k: getattr(args, k) for k in ("batch_size", "warmup", "steps", "repeats")},
        "images_per_s": runs,
        "median_images_per_s": median,
        "ratios": ratios,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "lightning": L.__version__,
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def render(result: dict[str, Any]) -> str:
    """The results as a markdown table with the ratios and the machine."""
    s = result["settings"]
    lines = ["| loop | precision | images/s (median) | runs |", "|---|---|---:|---|"]
    for name, values in result["images_per_s"].items():
        loop, precision = name.split(" ")
        runs = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(
            f"| {loop} | {precision} | {result['median_images_per_s'][name]:,.0f} | {runs} |"
        )
    lines.append("")
    for name, ratio in result["ratios"].items():
        verdict = ""
        if name.startswith("slimlab / plain"):
            verdict = f" (target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'})"
        lines.append(f"- {name}: {ratio:.3f}{verdict}")
    v = result["versions"]
    lines += [
        "",
        f"ResNet-20, synthetic 3x32x32, batch {s['batch_size']}, {s['steps']} timed steps after "
        f"{s['warmup']}, {s['repeats']} interleaved repeats; {result['device']}, torch "
        f"{v['torch']} (CUDA {v['cuda']}), lightning {v['lightning']}, Python {v['python']}, "
        f"{result['date']}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first, >= 1")
    parser.add_argument("--steps", type=int, default=100, help="timed steps, >= 1")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds, >= 1")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "bench")
    parser.add_argument("--update-docs", action="store_true", help=f"write into {DOC.name}")
    parser.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-json",
        type=Path,
        help="render a bench_gpu.json measured elsewhere (e.g. fetched from a GPU machine)",
    )
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        if args.update_docs and result["device"] == "cpu":
            parser.error(
                f"--update-docs records GPU results: {args.from_json} was measured on CPU"
            )
        table = render(result)
        print(table)
    else:
        if min(args.batch_size, args.warmup, args.steps, args.repeats) < 1:
            parser.error("--batch-size, --warmup, --steps and --repeats must each be >= 1")
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: torch.cuda.is_available() is False (give --device cpu)")
        if args.update_docs and args.device != "cuda":
            parser.error("--update-docs records GPU results: run it with --device cuda")
        warnings.filterwarnings("ignore")
        result = measure(args)
        table = render(result)
        print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "bench_gpu.md").write_text(table + "\n")
        print(f"wrote {args.out / 'bench_gpu.json'} and bench_gpu.md", file=sys.stderr)
    if args.update_docs:
        replace_doc_block(args.doc, START, END, table)
        print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
