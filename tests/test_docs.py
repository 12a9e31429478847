"""The README and docs/ point at things that exist: every relative link, every results file and every script
they name. A moved file breaks this test, not a reader's first click."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target) and ![alt](target)
# paths written in backticks: results, benchmark scripts, jobs, docs pages, serve configs
PATH = re.compile(r"`((?:benchmarks|jobs|docs|serve|infra|platform|clipsynth_core|tests|scripts)/[\w./-]+\.\w+)`")


def _targets(page: Path) -> list[tuple[str, Path]]:
    text = page.read_text()
    found = []
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        found.append((target, (page.parent / target).resolve()))
    for path in PATH.findall(text):
        if "*" in path or "<" in path:
            continue
        found.append((path, (ROOT / path).resolve()))
    return found


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_and_named_file_exists(page):
    missing = [target for target, path in _targets(page) if not path.exists()]
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_checker_sees_links_and_paths(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("see [a](other.md), ![f](fig.png#x), `benchmarks/results/x_cpu.json` and [w](https://x.org)\n")
    names = [t for t, _ in _targets(page)]
    assert names == ["other.md", "fig.png", "benchmarks/results/x_cpu.json"]
