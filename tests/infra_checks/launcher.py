"""The Ray cluster launcher config (infra/aws/cluster.yaml) against Ray's own validation."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from infra_checks.files import IMAGE, RAY_VERSION, ROOT


def launcher_problems(path: Path) -> list[str]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(path.read_text())
    try:
        prepared = prepare_config(copy.deepcopy(cfg))
        validate_config(prepared)
    except Exception as e:
        return [f"Ray rejects the config: {type(e).__name__}: {str(e).splitlines()[0]}"]
    p = []
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    workers = {name: t for name, t in types.items() if name != head}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    if not any(
        t["node_config"].get("InstanceType") == "p4d.24xlarge" and t["resources"]["GPU"] == 8 for t in gpu.values()
    ):
        p.append("no p4d.24xlarge worker type with GPU: 8")
    if not any(n not in gpu for n in workers):
        p.append("no CPU worker type for ingestion")
    for name, t in workers.items():
        if t.get("min_workers", 0) != 0:
            p.append(f"{name}: min_workers {t['min_workers']}: workers must scale from zero")
    for name, t in types.items():
        if "IamInstanceProfile" not in t["node_config"]:
            p.append(f"{name}: no IamInstanceProfile (S3 access without keys)")
    if not str(prepared.get("docker", {}).get("image", "")).endswith(f"/{IMAGE}"):
        p.append(f"docker.image is not the platform image {IMAGE}")
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        for cmd in prepared.get(key) or []:
            if re.search(r"pip3?\s+install[^;&|]*\bray\b", cmd):
                p.append(f"{key} installs Ray over the image's pinned {RAY_VERSION}: {cmd[:80]}")
    mounts = prepared.get("file_mounts") or {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(prepared.get(key) or [])
        if "RAY_AUTH_MODE=token" not in start:
            p.append(f"{key}: Ray token authentication is off")
        if "~/.ray/auth_token" not in mounts:
            p.append(f"{key}: the Ray token is not copied to the nodes")
        sourced = re.findall(r"\.\s+(~/\S+\.env)", start)
        if not sourced or any(s not in mounts for s in sourced):
            p.append(f"{key}: the environment file (MLFLOW_TRACKING_URI) is not mounted and sourced")
    if "--autoscaling-config" not in " ".join(prepared.get("head_start_ray_commands") or []):
        p.append("head start command runs without the autoscaler")
    for remote, local in mounts.items():
        if not local.startswith("~") and not (ROOT / local).exists() and not (ROOT / f"{local}.example").exists():
            p.append(f"file_mounts {remote}: neither {local} nor {local}.example exists")
    return p
