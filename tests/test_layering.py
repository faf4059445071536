"""The package's layering, enforced: one straight line from the numerics at the bottom to the command line
at the top (README "Layout").  Every ``import`` of a dpmsched module — at module level *or inside a
function* — must point to the same layer or a lower one, the module graph must have no cycle, argparse
lives only in ``dpmsched.cli``, no module imports a private name of another, and no module passes 400 lines.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "dpmsched"

#: bottom → top.  A module belongs to the first entry that equals it or is a package prefix of it.
LAYERS = [
    ["dpmsched.noise"],
    ["dpmsched.schedules", "dpmsched"],                 # the package root imports only Schedule
    ["dpmsched.solvers"],
    ["dpmsched.theory"],
    ["dpmsched.denoisers"],
    ["dpmsched.data"],
    ["dpmsched.files", "dpmsched.provenance", "dpmsched.resources"],
    ["dpmsched.checkpoints"],
    ["dpmsched.adapters"],
    ["dpmsched.models"],
    ["dpmsched.metrics"],
    ["dpmsched.optimize"],
    ["dpmsched.train"],
    ["dpmsched.finetune", "dpmsched.skiptune"],
    ["dpmsched.plots"],
    ["dpmsched.widgets"],
    ["dpmsched.batch"],
    ["dpmsched.executors"],                             # where sweep runs execute: local pool, Dask
    ["dpmsched.sweep"],
    ["dpmsched.report"],
    ["dpmsched.results"],
    ["dpmsched.cli", "dpmsched.__main__"],
]
NUMERICS = 4           # layers [0, NUMERICS): noise, schedules, solvers, theory


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer(mod: str) -> int:
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (mod == prefix or (prefix != "dpmsched" and mod.startswith(prefix + "."))) and best is None:
                best = i
    if best is None:
        raise AssertionError(f"{mod} is in no layer: add it to LAYERS in tests/test_layering.py and the README")
    return best


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mod: str) -> list[tuple[str, int, list[str]]]:
    """(imported dpmsched module, line, imported names) for every import statement anywhere in ``mod``."""
    path = MODULES[mod]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "dpmsched"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, path.name == "__init__.py", node)
            if target.split(".")[0] != "dpmsched":
                continue
            names = [a.name for a in node.names]
            out.append((target, node.lineno, names))
            out += [(f"{target}.{n}", node.lineno, []) for n in names if f"{target}.{n}" in MODULES]
    return [(t, ln, names) for t, ln, names in out if t in MODULES]


def test_every_module_has_a_layer():
    for mod in MODULES:
        layer(mod)


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_imports_point_down_the_line(mod):
    here = layer(mod)
    up = [f"line {ln}: {t} (layer {layer(t)})" for t, ln, _ in imports(mod) if layer(t) > here]
    assert not up, f"{mod} (layer {here}) imports from higher layers: {up}"
    if here < NUMERICS:
        low = [t for t, _, _ in imports(mod) if layer(t) >= NUMERICS]
        assert not low, f"numerics module {mod} imports {low} (no I/O, CLI, optimizer or adapters below)"


def test_the_module_graph_has_no_cycle():
    graph = {m: {t for t, _, _ in imports(m) if t != m} for m in MODULES}
    state = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_private_name_crosses_a_module():
    bad = []
    for mod in MODULES:
        for target, ln, names in imports(mod):
            bad += [f"{mod}:{ln} imports {target}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__") and target != mod]
    assert not bad, bad


def _private_imports_outside_the_package():
    bad = []
    files = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dpmsched"):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    return bad


def test_benchmarks_and_tests_import_no_private_name_either():
    assert not _private_imports_outside_the_package()


def test_argparse_only_in_the_cli():
    users = [m for m in MODULES if not layer(m) == len(LAYERS) - 1 and "argparse" in MODULES[m].read_text()]
    assert not users, f"command-line parsing outside dpmsched.cli: {users}"


def test_modules_stay_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not big, f"split these modules along their ideas: {big}"
