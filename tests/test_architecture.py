"""The import-direction rule of docs/architecture.md, enforced on every module under src/slimlab.

Layers, and imports point down only:
    entries (train, eval, export, serve) -> compression, callbacks, inference
    -> models, data, optim -> utils
A module may import its own package (models from models); an entry never imports another
entry; a compression technique (a module defining a CompressionCallback) never imports
another technique: what two share lives in a common module of the compression package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "slimlab"
LAYERS = {
    "train": 3,
    "eval": 3,
    "export": 3,
    "serve": 3,
    "compression": 2,
    "callbacks": 2,
    "inference": 2,
    "models": 1,
    "data": 1,
    "optim": 1,
    "utils": 0,
}
ENTRIES = {"train", "eval", "export", "serve"}
# imports that break the rule today, each with who removes it; the test fails once one is gone
KNOWN = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob("*.py")}


def imported(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Every slimlab module `tree` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.startswith("slimlab.")}


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def techniques(trees: dict[str, ast.Module]) -> set[str]:
    """Compression modules that define a CompressionCallback subclass."""
    return {
        name
        for name, tree in trees.items()
        if name.startswith("slimlab.compression.")
        and any(
            isinstance(node, ast.ClassDef)
            and any(
                getattr(b, "id", getattr(b, "attr", "")) == "CompressionCallback"
                for b in node.bases
            )
            for node in ast.walk(tree)
        )
    }


def violations() -> dict[tuple[str, str], str]:
    trees = modules()
    known_modules = set(trees)
    technique_modules = techniques(trees)
    found: dict[tuple[str, str], str] = {}
    for name, tree in trees.items():
        source = package_of(name)
        if source is None:
            continue  # slimlab/__init__.py
        is_package = (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").is_file()
        for target in imported(name, tree, is_package):
            if target not in known_modules:
                continue  # `from slimlab.x import name`: the module itself is also recorded
            dest = package_of(target)
            if dest is None or target == name:
                continue
            if source == dest and source not in ENTRIES:
                if name in technique_modules and target in technique_modules:
                    found[(name, target)] = "a compression technique imports another technique"
                continue
            if source not in LAYERS or dest not in LAYERS:
                found[(name, target)] = f"{source} or {dest} has no layer in LAYERS"
            elif LAYERS[dest] >= LAYERS[source]:
                found[(name, target)] = f"{source} (layer {LAYERS[source]}) imports {dest} " + (
                    f"(layer {LAYERS[dest]}): imports must point down"
                )
    return found


def test_the_rule_finds_what_it_should() -> None:
    trees = modules()
    assert {"slimlab.compression.pruning", "slimlab.compression.quantization"} <= techniques(trees)
    assert "slimlab.compression.measure" not in techniques(trees)
    assert "slimlab.models.base" in imported("slimlab.models", trees["slimlab.models"], True)


def test_imports_point_down_only() -> None:
    found = violations()
    unexpected = {pair: why for pair, why in found.items() if pair not in KNOWN}
    assert not unexpected, "\n".join(f"{a} -> {b}: {why}" for (a, b), why in unexpected.items())
    gone = [f"{a} -> {b} ({who})" for (a, b), who in KNOWN.items() if (a, b) not in found]
    assert not gone, f"fixed, so remove from KNOWN in tests/test_architecture.py: {gone}"


@pytest.mark.parametrize("package", ["models", "data", "optim", "utils"])
def test_lower_layers_do_not_name_compression(package: str) -> None:
    """Not even as a string (a registry of "slimlab.compression...:restore" targets)."""
    for path in (PACKAGE / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        strings = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ]
        named = [s for s in strings if "slimlab.compression" in s]
        assert not named, f"{path.relative_to(SRC)} names compression: {named}"
