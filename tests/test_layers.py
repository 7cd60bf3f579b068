"""The dependency rule of docs/design.md §2, read off the code: every import of `pipeline/` and
`workers/` (lazy ones inside functions included) goes to its own layer or one below it, never up,
and never sideways between the two packages that share a layer. Also the size rule: no module over
450 lines, no function over 80."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module belongs to the longest prefix listed; the entry points (`cli` modules of
# any package, `pipeline logs`, `python -m pipeline`) sit on top and may import anything.
LAYERS: list[tuple[str, ...]] = [
    ("pipeline.spec", "pipeline.store"),  # what the campaign is and where it is kept
    ("workers",),  # the data plane
    ("pipeline.records",),  # campaign identity, units, ledger, artifacts, nodes and prices
    ("pipeline.progress", "pipeline.pods"),  # what runs and bills, read from the store; the pods
    ("pipeline.run",),  # the run loop: driver, its parts, scheduler, executor, tasks
    ("pipeline.plan",),  # the forecast: simulates the run loop's scheduler
    ("pipeline.report",),  # reports: read progress, cost and the plan's comparison
]
ENTRY = ("pipeline.cli", "pipeline.logs", "pipeline.__main__", "pipeline")
MAX_LINES, MAX_FUNCTION = 450, 80


def modules() -> dict[str, Path]:
    out = {}
    for top in ("pipeline", "workers"):
        for f in sorted((ROOT / top).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def place(mod: str) -> tuple[int, str] | None:
    """(layer, package) of a module; None for an entry point."""
    if mod in ENTRY or mod.endswith(".cli"):
        return None
    for i, layer in enumerate(LAYERS):
        for pkg in layer:
            if mod == pkg or mod.startswith(pkg + "."):
                return i, pkg
    raise AssertionError(f"{mod} is in no layer of tests/test_layers.py: add it to LAYERS (and docs/design.md §2)")


def imports(mod: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.add(base)
    return {m for m in out if m.split(".")[0] in ("pipeline", "workers")}


def violations() -> list[str]:
    mods, bad = modules(), []
    for mod, path in mods.items():
        here = place(mod)
        if here is None:
            continue
        for target in sorted(imports(mod, path)):
            there = place(target)
            if there is None:
                bad.append(f"{mod} imports the entry point {target}")
            elif there[0] > here[0]:
                bad.append(f"{mod} (layer {here[0]}, {here[1]}) imports {target} (layer {there[0]}, {there[1]}): up")
            elif there[0] == here[0] and there[1] != here[1]:
                bad.append(f"{mod} imports {target}: sideways between {here[1]} and {there[1]}")
    return bad


def test_no_import_goes_up_or_sideways():
    assert violations() == []


def test_workers_import_only_the_spec_and_the_store():
    bad = [
        f"{mod} imports {t}" for mod, path in modules().items() if mod.startswith("workers")
        for t in imports(mod, path) if t.startswith("pipeline") and place(t)[1] not in ("pipeline.spec", "pipeline.store")
    ]
    assert bad == []


def test_the_rule_catches_an_import_that_goes_up(tmp_path, monkeypatch):
    """The check itself: a records module importing the driver is reported (not silently passed)."""
    fake = tmp_path / "ledger.py"
    fake.write_text("from pipeline.run.driver import Driver\nfrom pipeline.pods import client\n")
    real = modules

    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: {**real(), "pipeline.records.fake": fake})
    got = [v for v in violations() if v.startswith("pipeline.records.fake")]
    assert got == ["pipeline.records.fake (layer 2, pipeline.records) imports pipeline.pods (layer 3, pipeline.pods): up",
                   "pipeline.records.fake (layer 2, pipeline.records) imports pipeline.run.driver (layer 4, pipeline.run): up"]


def test_no_module_over_450_lines_and_no_function_over_80():
    long = []
    for mod, path in modules().items():
        text = path.read_text()
        if (n := text.count("\n")) > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert long == []
