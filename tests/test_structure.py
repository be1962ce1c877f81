"""The package's layout keeps its promises: subpackages import only downward, no import cycle, no private reads.

Read from the source with ``ast`` (lazy imports inside functions included), so nothing is imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "multimodal_rec"
# Lower layers first; a module may import its own layer and the layers before it, never a later one.
LAYERS = (
    {"errors", "config", "runtime", "progress"},
    {"data", "model"},
    {"index"},
    {"bundle"},
    {"training", "encoding"},
    {"serving"},
    {"evaluation", "bench"},
    {"cli", "__init__"},
)
NOT_INTO_TRAINING = {"serving", "index", "encoding", "bundle"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts).removesuffix(".__init__")] = p
    return out


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage, or the top-level module's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(unit: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if unit in names)


def _imports(path: Path, module: str) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                deps.add(f"{target}.{alias.name}")
                deps.add(target)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
    return {d for d in deps if d.startswith("multimodal_rec")}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {d for d in _imports(p, m) if d in mods and d != m} for m, p in mods.items()}


def test_every_module_sits_in_a_layer() -> None:
    units = {_unit(m) for m in _modules()}
    known = set().union(*LAYERS)
    assert units <= known, f"not in LAYERS: {sorted(units - known)}"


def test_subpackages_import_only_downward() -> None:
    bad = []
    for m, deps in _graph().items():
        for d in deps:
            if d == "multimodal_rec":  # the package itself (its __version__); its lazy exports load nothing here
                continue
            if _layer(_unit(d)) > _layer(_unit(m)) or (_unit(m) in NOT_INTO_TRAINING and _unit(d) == "training"):
                bad.append(f"{m} imports {d}")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_no_module_reads_another_objects_private_names() -> None:
    bad = []
    for p in _modules().values():
        for node in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Name) and owner.id in ("sys", "os"):  # sys._getframe-style stdlib APIs
                continue
            bad.append(f"{p.relative_to(PKG.parent)}:{node.lineno}: .{node.attr}")
    assert not bad, "\n".join(bad)


def test_no_private_name_is_imported_across_modules() -> None:
    bad = []
    for m, p in _modules().items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("multimodal_rec"):
                bad += [f"{m} imports {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, "\n".join(bad)
