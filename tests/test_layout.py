"""Repository layout guarantees: the stdlib `platform` is never shadowed, and the core never imports Ray."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_stdlib_platform_works_from_the_repo_root():
    assert not (ROOT / "platform" / "__init__.py").exists()
    r = run("import platform; print(platform.system())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Linux"


def test_platform_folder_imports_as_clipsynth_platform():
    r = run(
        "import clipsynth_platform.datasets.schema as s, platform; print(s.__file__); print(platform.python_version())"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == str(ROOT / "platform" / "datasets" / "schema.py")


def test_core_does_not_import_ray_or_mlflow():
    r = run(
        "import sys, clipsynth_core; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'clipsynth_platform')))"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    for f in (ROOT / "clipsynth_core").glob("*.py"):
        text = f.read_text()
        assert "import ray" not in text and "import mlflow" not in text, f


def test_ruff_guards_stdlib_shadowing():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "A" in cfg["tool"]["ruff"]["lint"]["select"]  # the flake8-builtins family, which holds A005
    assert cfg["tool"]["setuptools"]["package-dir"]["clipsynth_platform"] == "platform"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    test_line = next(line for line in readme[:10] if "# installs what it needs" in line)
    command = test_line.split("#")[0].strip()
    assert command == "make test"
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == command
