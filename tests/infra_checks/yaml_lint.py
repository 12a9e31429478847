"""yamllint with the repo's config, on files and on the YAML embedded in KubeRay strings."""

from __future__ import annotations

from pathlib import Path

from yamllint import config as yamllint_config
from yamllint import linter as yamllint_linter

from infra_checks.files import YAMLLINT_CONFIG, embedded_yaml, load_docs, where


def lint_text(text: str, name: str) -> list[str]:
    conf = yamllint_config.YamlLintConfig(file=str(YAMLLINT_CONFIG))
    return [f"{name}:{p.line}:{p.column}: [{p.level}] {p.desc} ({p.rule})" for p in yamllint_linter.run(text, conf)]


def lint_problems(path: Path) -> list[str]:
    """yamllint with the repo's config, warnings included, plus the YAML embedded in KubeRay strings."""
    text = path.read_text()
    problems = lint_text(text, where(path))
    if problems:
        return problems
    for key, value in embedded_yaml(load_docs(path)):
        problems += lint_text(value, f"{where(path)} [{key}]")
    return problems
