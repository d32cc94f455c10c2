"""Imports point downstream only. Every import of every module (including those inside
functions) is parsed and checked against the stage graph of the README's design section."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("manifests", "generator", "cluster", "trainer", "evaluation")
ALLOWED = {
    "manifests": set(),
    "generator": {"manifests"},
    "cluster": {"manifests", "generator"},
    "trainer": {"manifests"},
    "evaluation": {"manifests", "generator", "trainer"},
}
# The front door composes every stage's commands; the demo and the experiment run every stage.
FRONT_DOOR = {"cluster/front_door.py", "cluster/__main__.py", "cluster/demo.py",
              "cluster/experiment.py"}


def _imports(path: Path):
    """(line, absolute module) of every import in ``path``; relative ones resolved."""
    rel = path.relative_to(ROOT)
    package = ["tumorforge", *rel.parent.parts]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield node.lineno, module
            if module == "tumorforge":          # from tumorforge import trainer
                for alias in node.names:
                    yield node.lineno, f"tumorforge.{alias.name}"


def _violations():
    found = []
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for line, module in _imports(path):
                top, _, rest = module.partition(".")
                if top in STAGES:
                    found.append(f"{rel}:{line}: imports top-level {module!r}; use tumorforge.{module}")
                    continue
                if top != "tumorforge" or not rest:
                    continue
                target = rest.split(".")[0]
                if target == stage or rel in FRONT_DOOR:
                    continue
                if target not in ALLOWED[stage]:
                    found.append(f"{rel}:{line}: {stage} -> {target} ({module})")
    return found


def test_imports_point_downstream_only():
    assert _violations() == []


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The rule holds for a function-level import too (the checker is not blind to them)."""
    bad = ROOT / "trainer" / "_import_probe.py"
    bad.write_text("def f():\n    from tumorforge.cluster import job\n    from ..generator import x\n")
    try:
        found = _violations()
    finally:
        bad.unlink()
    assert any("trainer/_import_probe.py:2: trainer -> cluster" in v for v in found)
    assert any("trainer/_import_probe.py:3: trainer -> generator" in v for v in found)
