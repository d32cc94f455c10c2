"""tumorforge installs as one namespace and runs from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "tumorforge"


@pytest.fixture
def shadowing_folder(tmp_path):
    """A working directory full of modules named like tumorforge's stages."""
    for name in ("trainer", "generator", "manifests", "evaluation"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('ran the local {name}.py')\n")
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "__init__.py").write_text("raise SystemExit('ran the local cluster/')\n")
    return tmp_path


def _run(argv, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["script", "module"])
def test_runs_from_a_folder_that_shadows_the_stage_names(shadowing_folder, entry):
    base = [str(SCRIPT)] if entry == "script" else [sys.executable, "-m", "tumorforge.cluster"]
    version = _run(base + ["--version"], shadowing_folder)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("tumorforge ")
    # Building the parser imports every stage's command module, so one command's help loads
    # them all (one call: each launch imports the stack again, seconds on a 2-core machine).
    proc = _run(base + ["train", "--help"], shadowing_folder)
    assert proc.returncode == 0 and "usage: tumorforge train" in proc.stdout, proc.stderr


def test_wheel_holds_only_the_tumorforge_namespace(tmp_path):
    """No top-level generator, trainer, cluster, ... in site-packages: only tumorforge/."""
    import shutil
    src = tmp_path / "src"          # a copy, so the build leaves nothing in the checkout
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("manifests", "generator", "cluster", "trainer", "evaluation"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(src)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("tumorforge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    others = tops - {"tumorforge"}
    assert len(others) == 1 and others.pop().endswith(".dist-info"), tops
    for stage in ("manifests", "generator", "cluster", "trainer", "evaluation"):
        assert f"tumorforge/{stage}/__init__.py" in names
    assert "tumorforge/__init__.py" not in names            # a namespace package
    assert "tumorforge/trainer/configs/cpu-small.yaml" in names
    assert "tumorforge/cluster/__main__.py" in names
    assert "tumorforge/manifests/dataset/reader.py" in names
    assert "tumorforge/evaluation/fidelity/command.py" in names     # every subpackage listed
    assert not [n for n in names if "twins" in n], "the kernels' NumPy twins are test code"
