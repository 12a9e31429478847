"""The files under infra/ and the names, versions and paths the checks compare them with."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
MLFLOW_K8S = INFRA / "mlflow" / "k8s"
LAUNCHER = INFRA / "aws" / "cluster.yaml"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

IMAGE = "clipsynth:0.1.0"
NAMESPACE = "clipsynth"
RAY_SERVICE_ACCOUNT = "clipsynth-ray"
ENV_CONFIGMAP = "clipsynth-env"
GPU = "nvidia.com/gpu"
SERVE_IMPORT_PATH = "serve:app"
SERVE_INGRESS = "SynthesizerIngress"
SERVE_DEPLOYMENTS = {"ClipEncoder", "DiffusionSampler", "Vocoder", SERVE_INGRESS}
# Job flags whose values are storage locations: on a cluster they must be on shared storage (S3).
URI_FLAGS = {"--input", "--output", "--labels", "--data", "--storage-path"}


def _pin(package: str) -> str:
    """The exact version pinned for `package` in pyproject.toml (`"name[extras]==X"`)."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([^"]+)"', text)
    assert m, f"pyproject.toml pins no exact version of {package}"
    return m.group(1)


RAY_VERSION = _pin("ray")
MLFLOW_VERSION = _pin("mlflow")


# --------------------------------------------------------------------------------------------- files


def infra_yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml"})


def load_docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_files() -> list[Path]:
    return sorted([*KUBERAY.glob("*.yaml"), *MLFLOW_K8S.glob("*.yaml")])


def k8s_docs() -> list[dict]:
    return [d for p in k8s_files() for d in load_docs(p)]


def where(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def write_yaml(path: Path, docs: list) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def walk(obj, path: str = ""):
    """Yield (path, key, value) for every mapping entry, depth first."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path, k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")


EMBEDDED_YAML_KEYS = ("serveConfigV2", "runtimeEnvYAML")


def embedded_yaml(docs: list) -> list[tuple[str, str]]:
    return [(k, v) for doc in docs for _, k, v in walk(doc) if k in EMBEDDED_YAML_KEYS and isinstance(v, str)]


YAMLLINT_CONFIG = ROOT / ".yamllint"
