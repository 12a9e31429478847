"""Synthesizer bundles in MLflow: register one as a model, and resolve any model URI to a local bundle.

Accepted URIs (`CLIPSYNTH_MODEL_URI`, `--model`): a bundle directory, `models:/NAME/VERSION`,
`models:/NAME@ALIAS`, `runs:/RUN_ID/PATH`, or any other MLflow artifact URI of a logged synthesizer model.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from clipsynth_platform.runtime.logs import get_logger

MODEL_CODE = str(Path(__file__).with_name("mlflow_model.py"))
BUNDLE_ARTIFACT = "bundle"

logger = get_logger("registry")


def default_tracking_uri(root: str | os.PathLike | None = None) -> str:
    """MLFLOW_TRACKING_URI, else a SQLite file in `root` (default: the current directory)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(root or os.getcwd()).resolve() / 'mlflow.db'}"


def ensure_experiment(name: str, artifact_root: str | os.PathLike | None = None) -> str:
    """Experiment id of `name`, created with an explicit artifact location when it does not exist.

    With a SQLite store and no artifact location MLflow writes ./mlruns wherever the process runs; the
    artifact root defaults to `mlartifacts/` beside the SQLite file (or MLflow's default for servers).
    """
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    tracking = mlflow.get_tracking_uri()
    if artifact_root is not None:
        location = str(artifact_root)
    elif tracking.startswith("sqlite:///"):
        location = str(Path(tracking[len("sqlite:///") :]).resolve().parent / "mlartifacts" / name)
    if location and "://" not in location:
        Path(location).mkdir(parents=True, exist_ok=True)
        location = Path(location).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def synthesizer_signature():
    """The pyfunc's contract (mlflow_model.py): a "query" column (optional "steps", "seed") in, one float32
    waveform per query out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema(
        [ColSpec("string", "query"), ColSpec("long", "steps", required=False), ColSpec("long", "seed", required=False)]
    )
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1))]))


def log_bundle_model(bundle_dir: str | os.PathLike, registered_name: str | None = None, name: str = "synthesizer"):
    """Log the bundle as a pyfunc model in the active run (and register it when `registered_name`).

    Returns MLflow's ModelInfo; `model_info.registered_model_version` holds the version when registered.
    """
    # MLflow prints its registration notes ("Registered model ... already exists", "Created version") and its
    # artifact progress bars to stderr itself: they go to the log file, as its logger's lines do.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), warnings.catch_warnings():
            # the pyfunc's signature is given; an input example would make MLflow load and run the model here
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=MODEL_CODE,
                artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                registered_model_name=registered_name,
                signature=synthesizer_signature(),
                pip_requirements=["clipsynth"],
            )
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                get_logger("tracking").debug("mlflow: %s", line.strip())


def model_version_of(model_uri: str) -> tuple[str, str]:
    """(name, version) of `models:/NAME/VERSION`, `models:/NAME/latest` (the highest version) or
    `models:/NAME@ALIAS` (the version the alias points at)."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri} is not a registered model URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    rest = model_uri[len("models:/") :].rstrip("/")
    client = mlflow.MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias.split("/")[0]).version)
    name, _, version = rest.partition("/")
    version = version.split("/")[0]
    if name and version == "latest":
        versions = client.search_model_versions(f"name='{name}'")
        if not versions:
            raise ValueError(f"{model_uri}: the registered model {name!r} has no versions")
        return name, str(max(int(v.version) for v in versions))
    if not name or not version.isdigit():
        raise ValueError(f"{model_uri}: expected models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS")
    return name, version


def training_run_of(model_uri: str, metadata: Mapping[str, Any]) -> str | None:
    """The training run behind a model URI: runs:/ID/..., a registered version's source run, or the bundle's
    metadata (training_run_id / run_id / mlflow_run_id)."""
    try:
        if model_uri.startswith("runs:/"):
            return model_uri[len("runs:/") :].split("/")[0] or None
        if model_uri.startswith("models:/"):
            return mlflow.MlflowClient().get_model_version(*model_version_of(model_uri)).run_id or None
    except (mlflow.exceptions.MlflowException, ValueError) as exc:
        logger.info("note: cannot resolve the training run of %s: %s", model_uri, exc)
    for key in ("training_run_id", "run_id", "mlflow_run_id"):
        if metadata.get(key):
            return str(metadata[key])
    return None


def set_alias(model_uri: str, alias: str) -> str:
    """Point `alias` at the version `model_uri` names; returns the alias URI (`models:/NAME@ALIAS`)."""
    name, version = model_version_of(model_uri)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return f"models:/{name}@{alias}"


def resolve_bundle(uri: str, dst: str | os.PathLike | None = None) -> Path:
    """A local directory holding bundle.json for a bundle path or an MLflow model URI."""
    p = Path(uri).expanduser()
    if "://" not in uri and not uri.startswith(("models:", "runs:")):
        if (p / "bundle.json").exists():
            return p
        raise FileNotFoundError(f"{uri} is not a synthesizer bundle directory (no bundle.json)")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None))
    for candidate in [local, local / "artifacts" / BUNDLE_ARTIFACT, *local.rglob("bundle.json")]:
        c = candidate.parent if candidate.name == "bundle.json" else candidate
        if (c / "bundle.json").exists():
            return c
    raise FileNotFoundError(f"{uri} holds no synthesizer bundle (no bundle.json under {local})")


def writable_bundle_copy(model_uri: str, dst: str | os.PathLike) -> Path:
    """A writable local copy of a model's bundle at `dst` (replaced if there), e.g. to add gap statistics."""
    dst = Path(dst)
    download = dst.with_name(f".download-{dst.name}")
    if dst.exists():
        shutil.rmtree(dst)
    try:
        shutil.copytree(resolve_bundle(model_uri, dst=download), dst)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return dst


VOCODER_ARTIFACT = "vocoder"


def resolve_vocoder_dir(uri: str, dst: str | os.PathLike | None = None) -> Path:
    """A local directory holding a HiFi-GAN (vocoder.json, as the HiFi-GAN job logs it, or a bundle.json).

    `uri`: a local directory, `s3://...` (copied down), or any MLflow URI (`runs:/RUN_ID/vocoder`,
    `models:/NAME/VERSION` of a synthesizer bundle, an artifact URI).
    """
    import tempfile

    def find(root: Path) -> Path | None:
        for name in ("vocoder.json", "bundle.json"):
            if (root / name).exists():
                return root
        for name in ("vocoder.json", "bundle.json"):
            hits = sorted(root.rglob(name))
            if hits:
                return hits[0].parent
        return None

    if uri.startswith("s3://"):
        from clipsynth_platform.runtime.uri import fsspec_filesystem, strip_scheme

        local = Path(dst or tempfile.mkdtemp(prefix="clipsynth-vocoder-"))
        fsspec_filesystem(uri).get(strip_scheme(uri).rstrip("/") + "/", str(local), recursive=True)
    elif "://" not in uri and not uri.startswith(("models:", "runs:")):
        local = Path(uri).expanduser()
        if not local.is_dir():
            raise FileNotFoundError(f"vocoder {uri} is not a directory")
    else:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None))
    found = find(local)
    if found is None:
        raise FileNotFoundError(f"{uri} holds no vocoder (no vocoder.json or bundle.json under {local})")
    return found
