""".dockerignore semantics and the build context the image needs."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from infra_checks.dockerfile import dockerfile_facts
from infra_checks.files import ROOT


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern]]:
    """.dockerignore semantics (as in moby's patternmatcher): patterns are cleaned, `*` and `?` stay inside a
    path element, `**` spans elements, `!` re-includes, the last matching rule wins, and a rule matching a
    parent directory matches everything below it."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line[1:].strip() if negate else line).lstrip("/")
        rx, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif pattern[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif pattern[i] == "?":
                rx, i = rx + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                rx, i = rx + pattern[i : end + 1], end + 1
            else:
                rx, i = rx + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(f"^{rx}$")))
    return rules


def in_context(relpath: str, rules) -> bool:
    parts = relpath.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negate, rx in rules:
        if any(rx.match(prefix) for prefix in prefixes):
            excluded = not negate
    return not excluded


MUST_BE_IN_CONTEXT = [
    "pyproject.toml",
    "README.md",
    "clipsynth_core/__init__.py",
    "platform/datasets/schema.py",
    "jobs/preprocess.py",
    "serve/__init__.py",
]
MUST_STAY_OUT = [
    ".venv/bin/python",
    ".git/HEAD",
    "tests/test_infra.py",
    "infra/aws/cluster.yaml",
    "infra/mlflow/.env",
    "platform/__pycache__/schema.cpython-311.pyc",
    "clipsynth.egg-info/PKG-INFO",
    "benchmarks/results/ingest.json",
    "mlruns/0/meta.yaml",
    "artifacts/run/model.safetensors",
    "demo_output/a.wav",
    "scripts/bootstrap.sh",
    "mlflow.db",
    ".ci/run",
]


def context_problems(path: Path) -> list[str]:
    rules = dockerignore_rules(path)
    p = [f"{f} is left out of the build context" for f in MUST_BE_IN_CONTEXT if not in_context(f, rules)]
    p += [f"{f} is sent to the build context" for f in MUST_STAY_OUT if in_context(f, rules)]
    facts = dockerfile_facts()
    for src in facts["copy_sources"]:
        if not in_context(src, rules) or ((ROOT / src).is_dir() and not in_context(f"{src}/x.py", rules)):
            p.append(f"COPY {src}: excluded by .dockerignore")
    return p
