"""The package's shape: no import circle between its modules (imports inside functions count too; ``TYPE_CHECKING``
blocks do not), no module over about 400 lines (420) unless docs/DESIGN.md says why, and no module reading the
training flags from a dict by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LRC = Path(__file__).resolve().parents[1] / "lrc"
def _module(path: Path) -> str:
    rel = path.relative_to(LRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The lrc modules ``path`` imports anywhere except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrc") and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from lrc.x import submodule`
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lrc"))
    return out


MODULES = {_module(p): p for p in LRC.rglob("*.py")}
GRAPH = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def test_no_import_circle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_no_module_reads_the_training_flags_by_name():
    """The run is configured by ``TrainConfig`` attributes: no ``cfg["..."]`` / ``flags["..."]`` and no read of a run
    record's ``["flags"]`` outside ``TrainConfig.from_record`` (``OnPolicyOptions.from_record`` for ``lrc onpolicy``)."""
    offenders = []
    for m, p in MODULES.items():
        tree = ast.parse(p.read_text())
        allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "from_record"
                   and m in ("lrc.training.config", "lrc.onpolicy.options") for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value,
                                                                                                     str):
                base = ast.unparse(node.value)
                if base in ("cfg", "self.cfg", "flags", "self.flags") or (node.slice.value == "flags"
                                                                          and id(node) not in allowed):
                    offenders.append(f"{m}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    design = (LRC.parent / "docs" / "DESIGN.md").read_text()
    assert lines <= 420 or f"`{MODULES[module].relative_to(LRC.parent)}`" in design.split("## Module sizes")[-1], (
        f"{module}: {lines} lines; split it, or say why in docs/DESIGN.md, Module sizes")
