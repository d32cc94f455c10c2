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


# What a GPU node is sent without (issue 17: the device check carries only small wheels).
HEAVY = ("ray", "monai", "webdataset", "s3fs", "matplotlib", "torch", "moto", "boto3", "pydicom")


def test_the_gpu_synthesis_path_runs_without_the_heavy_packages():
    """``bench generator`` (built-in phantom, prepare, parameters drawn by a forked process,
    batched synthesis through the GPU kernels' CPU build where a C++ compiler exists) with ray,
    monai, webdataset, s3fs, matplotlib, torch, moto, boto3 and pydicom made unimportable."""
    import subprocess
    import sys
    from tumorforge.generator.kernels.module import compiler
    kernels = "cpu" if compiler() else "off"
    code = (
        "import importlib.abc, sys\n"
        f"HEAVY = {HEAVY!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in HEAVY:\n"
        "            raise ImportError('blocked for this test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from tumorforge.cluster.front_door import main\n"
        "sys.exit(main(['bench', 'generator', '--backend', 'numpy', '--samples', '2',\n"
        "               '--warmup', '0', '--batch', '2', '--phantom-scale', '0.2',\n"
        "               '--crop-size', '32,32,32', '--draw-processes', '1',\n"
        f"               '--kernels', '{kernels}']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "crops/s" in done.stdout and "parameters drawn by 1 processes" in done.stdout
    assert f"kernels: {kernels}" in done.stdout or kernels == "off"
