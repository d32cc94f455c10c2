"""Imports point downstream only. Every import of every module (including those inside
functions) is parsed and checked against the stage graph of docs/explanation/design.md, and the
modules together must form a DAG (a cycle hidden by a function-level import is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
            # ``from tumorforge import trainer``, ``from . import dicom``: the name may be a
            # submodule, so it is yielded too (a name that is not a module is harmless: the stage
            # check reads only the first part, the module graph the longest known prefix).
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}"


def _violations():
    found, seen = [], set()
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for line, module in _imports(path):
                top, _, rest = module.partition(".")
                # one report per import line and stage (``from x import a, b`` yields x, x.a, x.b)
                key = (rel, line, top, "" if top in STAGES else rest.split(".")[0])
                if key in seen:
                    continue
                seen.add(key)
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


# Evaluation reaches the generator through its facade only, so the generator's rooms can move
# without touching their readers.
FACADE = "tumorforge.generator.api"


def _facade_violations():
    """Imports of generator modules other than the facade by modules under evaluation/ (one
    report per import line). ``from tumorforge.generator import api`` names the facade too."""
    found = []
    for path in sorted((ROOT / "evaluation").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        by_line: dict[int, list[str]] = {}
        for line, module in _imports(path):
            if module == "tumorforge.generator" or module.startswith("tumorforge.generator."):
                by_line.setdefault(line, []).append(module)
        for line, modules in sorted(by_line.items()):
            named = [m for m in modules if m != "tumorforge.generator"]
            bad = [m for m in named if m != FACADE and not m.startswith(FACADE + ".")]
            if bad or not named:
                found.append(f"{rel}:{line}: imports {(bad or modules)[0]!r}; use {FACADE}")
    return found


def test_evaluation_uses_the_generator_only_through_its_facade():
    assert _facade_violations() == []


def test_the_facade_check_sees_generator_internals():
    """A module-level import of a generator module, a function-level one, a relative one and one
    of the generator package itself are reported; the facade is not."""
    probe = ROOT / "evaluation" / "_facade_probe.py"
    probe.write_text("from tumorforge.generator.api import synthesize\n"
                     "from tumorforge.generator import api\n"
                     "def f():\n"
                     "    from tumorforge.generator.config import GeneratorConfig\n"
                     "    from ..generator.synthesize import synthesize\n"
                     "    from tumorforge.generator import GENERATOR_VERSION\n"
                     "    import tumorforge.generator\n")
    try:
        found = [v for v in _facade_violations() if "_facade_probe" in v]
    finally:
        probe.unlink()
    assert [v.split(":")[1] for v in found] == ["4", "5", "6", "7"], found
    assert "tumorforge.generator.config" in found[0] and FACADE in found[0]


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every tumorforge module of the five stage folders: dotted name -> file (a package is
    named by its folder and read from its ``__init__.py``)."""
    found = {}
    for stage in STAGES:
        for path in sorted((root / stage).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(["tumorforge", *parts])] = path
    return found


def _module_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, from every import of every module (those inside
    functions included). An imported name resolves to the longest prefix that is a module (``from
    .nifti import Volume`` is an edge to ``nifti``). An edge from a module to a package that
    contains it is left out: Python imports the parent package first anyway, and ``from . import
    sibling`` names it only as the place the sibling lives; a package's ``__init__`` importing its
    own submodules stays an edge like any other."""
    modules = _modules(root)
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for line, module in _imports(path):
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if not module or module == name or name.startswith(module + "."):
                continue
            edges.setdefault(module, line)
    return graph


def _cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when it is a DAG (iterative
    depth-first search, so a deep chain cannot hit the recursion limit)."""
    state: dict[str, int] = {}                   # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _describe(graph, cycle):
    """``a (line 12) -> b (line 40) -> a``: where each edge of ``cycle`` is written."""
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def test_modules_import_one_another_without_cycles():
    """The modules form a DAG: no module reaches itself through imports, counting those inside
    functions (a function-level import hides a cycle from Python, not from the design)."""
    graph = _module_graph()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + _describe(graph, cycle)


def test_the_cycle_check_sees_a_cycle_hidden_inside_functions():
    """Two probe modules that import each other only inside functions are reported as a cycle."""
    a, b = ROOT / "manifests" / "_cycle_probe_a.py", ROOT / "manifests" / "_cycle_probe_b.py"
    a.write_text("def f():\n    from . import _cycle_probe_b\n")
    b.write_text("def g():\n    from ._cycle_probe_a import f\n")
    try:
        graph = _module_graph()
    finally:
        a.unlink()
        b.unlink()
    probe = {k: {t: n for t, n in v.items() if "_cycle_probe" in t}
             for k, v in graph.items() if "_cycle_probe" in k}
    cycle = _cycle(probe)
    assert cycle is not None and set(cycle) == {"tumorforge.manifests._cycle_probe_a",
                                                "tumorforge.manifests._cycle_probe_b"}
    assert "(line 2)" in _describe(graph, cycle)
    assert _cycle({"x": {"y": 1}, "y": {}, "z": {"x": 3}}) is None


# What a GPU node is sent without (issue 17: the device check carries only small wheels).
HEAVY = ("ray", "monai", "webdataset", "s3fs", "matplotlib", "torch", "moto", "boto3", "pydicom")


@pytest.mark.slow
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


def test_the_command_parser_loads_no_heavy_package_and_the_facade_resolves_every_name():
    """Building ``tumorforge``'s parser (every ``--help``, every command's first step) imports
    neither torch, MONAI, Ray, WebDataset, matplotlib nor s3fs: those load when a command runs.
    Every name the generator facade lists resolves (the facade loads its modules on first use)."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from tumorforge.cluster.front_door import build_parser\n"
            "build_parser()\n"
            "import tumorforge.generator.api as api\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules}\n"
            "               & {'torch', 'monai', 'ray', 'webdataset', 'matplotlib', 's3fs'})\n"
            "print('heavy:', heavy)\n"
            "missing = [n for n in api.__all__ if getattr(api, n, None) is None]\n"
            "print('missing:', missing)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: []" in done.stdout and "missing: []" in done.stdout, done.stdout
