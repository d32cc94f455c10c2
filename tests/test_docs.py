"""The documentation: the site builds with no warning, the shell blocks of the get-started pages
run on phantoms, and every relative link of README.md and of docs/ points at a file that exists.

A shell block (```bash, ```sh, ```shell) of a get-started page runs unless the line right before
it is a visible marker, ``<!-- not run: REASON -->``; NOT_RUN below lists every such block, so a
block cannot drop out of the test without this file saying so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GET_STARTED = DOCS / "get-started"
BIN = Path(sys.executable).parent          # the venv's bin: tumorforge and zensical live there

SHELLS = {"bash", "sh", "shell"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!-- not run: (.+) -->$")

# (page, first line of the block): the get-started blocks that do not run, each for the reason its
# marker gives (installs, minutes of work, or data and hardware the suite does not have).
NOT_RUN = {
    ("install.md", "make install     # creates .venv and installs tumorforge with everything it needs (CPU torch 2.13.0)"),
    ("install.md", "make demo        # creates .venv, installs everything (CPU torch 2.13.0), runs the main job on built-in data"),
    ("install.md", "pip install -e '.[gpu]'"),
    ("demo.md", "make demo                         # writes to demo-out/"),
    ("tests.md", "make test        # every test, then the strict build of these docs"),
    ("own-data.md", "tumorforge manifest build --layout generic /data/mine -o /data/mine/manifest.jsonl \\"),
}


def shell_blocks(page: Path) -> list[tuple[str, str | None]]:
    """(code, reason) of every shell block of ``page`` in order; reason is the not-run marker's,
    None for a block that runs."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{page.name}:{i + 1}: a code block that is never closed"
        if opened.group(1) in SHELLS:
            marker = MARKER.match(lines[i - 1]) if i else None
            blocks.append(("\n".join(lines[i + 1:end]), marker.group(1) if marker else None))
        i = end + 1
    return blocks


def test_exactly_the_listed_blocks_are_left_out():
    found = {(page.name, code.splitlines()[0])
             for page in sorted(GET_STARTED.glob("*.md"))
             for code, reason in shell_blocks(page) if reason is not None}
    assert found == NOT_RUN


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted(p.name for p in GET_STARTED.glob("*.md")
                                        if any(r is None for _, r in shell_blocks(p))))
def test_the_shell_blocks_of_a_get_started_page_run(page, tmp_path):
    """The page's runnable blocks, in order, in one empty folder, as a reader would type them."""
    assert (BIN / "tumorforge").exists(), f"no tumorforge in {BIN}: run make install"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for n, (code, reason) in enumerate(shell_blocks(GET_STARTED / page), 1):
        if reason is not None:
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (
            f"{page}, shell block {n} exited {proc.returncode}:\n{code}\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")


def test_the_site_builds_without_a_warning():
    """`zensical build --strict` (what `make docs` runs) aborts on any warning: a page, an anchor
    or a link that does not exist."""
    zensical = BIN / "zensical"
    assert zensical.exists(), f"no zensical in {BIN}: run make install (the docs extra)"
    proc = subprocess.run([str(zensical), "build", "--strict"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, NO_COLOR="1"))
    said = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0 and "No issues found" in said, said[-4000:]


def _links(path: Path) -> list[str]:
    """Targets of the Markdown links and images of ``path``, code left out."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text)


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("path", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file(path):
    """The build checks links between pages but not pictures, and nothing checks the README."""
    missing = []
    for target in _links(path):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file = (path.parent / target.split("#")[0]).resolve()
        if not file.exists():
            missing.append(target)
    assert not missing, f"{path.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_every_page_is_in_the_navigation():
    """The build does not warn about a page left out of mkdocs.yml's nav; readers would not find it."""
    def walk(entry):
        if isinstance(entry, str):
            yield entry
        elif isinstance(entry, list):
            for item in entry:
                yield from walk(item)
        elif isinstance(entry, dict):
            for value in entry.values():
                yield from walk(value)
    nav = set(walk(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - nav == set(), "pages missing from mkdocs.yml's nav"
    assert nav - pages == set(), "nav entries without a page"
