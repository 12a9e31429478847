"""Credentials written into infra files, by pattern and by the names of the keys that hold them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from infra_checks.files import DOCKERIGNORE, INFRA, YAMLLINT_CONFIG, embedded_yaml, load_docs, where

TEXT_RULES = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credentials in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"]+@"),
    "an AWS secret access key": re.compile(r"(?i)aws_secret_access_key\W{1,4}[A-Za-z0-9/+]{40}\b"),
    "a GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
}
SENSITIVE = re.compile(r"(?i)(passw(or)?d|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)")
# Values that are references, not secrets: ${VAR} / ${VAR:-x} / ${VAR:?msg} (Compose), $(VAR) (Kubernetes)
REFERENCE = re.compile(r"^(\$\{\w+(:?[-?+][^}]*)?\}|\$\(\w+\)|\$\w+)$")
# Keys whose values name a secret rather than hold one
REFERENCE_KEYS = {"secretName", "secretKeyRef", "secretRef", "serviceAccountName", "automountServiceAccountToken"}
ASSIGNMENT = re.compile(
    r"\b(\w*(?:PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|API_KEY)\w*)[ \t]*=[ \t]*(\"[^\"]*\"|'[^']*'|[^\s;&|]*)", re.I
)


def _literal(value) -> bool:
    """A non-empty string that is not a reference to a variable."""
    if not isinstance(value, str):
        return False
    v = value.strip().strip("\"'")
    return bool(v) and not REFERENCE.match(v)


def dict_nodes(obj):
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from dict_nodes(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from dict_nodes(v)


def string_nodes(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict | list):
        for v in obj.values() if isinstance(obj, dict) else obj:
            yield from string_nodes(v)


def secret_problems(path: Path) -> list[str]:
    """Credentials in a file: key patterns in any text; in YAML, literal values under password/secret/token/key
    names (env entries, mappings, embedded serveConfigV2/runtimeEnvYAML), Secret manifests with data, and
    NAME=value assignments inside strings (commands); in env files and Dockerfiles, NAME=value lines."""
    name = where(path)
    text = path.read_text()
    p = [f"{name}: {what}" for what, rx in TEXT_RULES.items() if rx.search(text)]
    lines: list[str] = []
    if path.suffix in {".yaml", ".yml"}:
        docs = load_docs(path)
        docs += [yaml.safe_load(v) for _, v in embedded_yaml(docs)]
        for d in (d for doc in docs for d in dict_nodes(doc)):
            if d.get("kind") == "Secret" and (d.get("data") or d.get("stringData")):
                p.append(f"{name}: a Secret manifest with values")
            env_name, env_value = d.get("name"), d.get("value")
            if isinstance(env_name, str) and SENSITIVE.search(env_name) and _literal(env_value):
                p.append(f"{name}: env {env_name} holds a literal value")
            p += [
                f"{name}: {key} holds a literal value"
                for key, value in d.items()
                if isinstance(key, str)
                and SENSITIVE.search(key)
                and key not in REFERENCE_KEYS
                and not key.startswith(("/", "~"))  # a file path (launcher file_mounts), not a setting
                and _literal(value)
            ]
        lines = [s for doc in docs for s in string_nodes(doc)]
    elif path.suffix != ".md":
        lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    for line in lines:
        for m in ASSIGNMENT.finditer(line):
            if _literal(m.group(2)):
                p.append(f"{name}: {m.group(1)} is assigned a literal value")
    return p


def scanned_files() -> list[Path]:
    files = [p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted([*files, DOCKERIGNORE, YAMLLINT_CONFIG])
