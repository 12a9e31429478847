"""The fields of the KubeRay resources the platform relies on (versions, images, GPUs, jobs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from infra_checks.dockerfile import APP_HOME
from infra_checks.files import (
    ENV_CONFIGMAP,
    GPU,
    IMAGE,
    NAMESPACE,
    RAY_SERVICE_ACCOUNT,
    RAY_VERSION,
    URI_FLAGS,
    load_docs,
    where,
)
from infra_checks.k8s_schema import ray_cluster_specs, ray_groups
from infra_checks.serve_config import serve_config_problems, serve_min_gpus


def parse_quantity(q) -> float:
    """Kubernetes quantity ("8Gi", "500m", 8) as a number (bytes or cores)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m or (m.group(2) and m.group(2) not in units):
        raise ValueError(f"not a quantity: {q!r}")
    return float(m.group(1)) * units.get(m.group(2), 1)


def group_gpus(group: dict) -> int:
    c = ((group.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return int(((c[0].get("resources") or {}).get("limits") or {}).get(GPU, 0) or 0)


def ray_cluster_problems(cluster: dict, at: str) -> list[str]:
    p = []
    if cluster.get("rayVersion") != RAY_VERSION:
        p.append(f"{at}.rayVersion is {cluster.get('rayVersion')!r}, pyproject pins ray {RAY_VERSION}")
    if (cluster.get("authOptions") or {}).get("mode") != "token":
        p.append(f"{at}: Ray token authentication is off (authOptions.mode: token)")
    groups = ray_groups(cluster)
    for name, group in groups:
        g = f"{at}[{name}]"
        params = group.get("rayStartParams")
        if not isinstance(params, dict) or any(not isinstance(v, str) for v in params.values()):
            p.append(f"{g}.rayStartParams must be a map of strings")
            params = {}
        pod = (group.get("template") or {}).get("spec") or {}
        if pod.get("serviceAccountName") != RAY_SERVICE_ACCOUNT:
            p.append(f"{g}: serviceAccountName is not {RAY_SERVICE_ACCOUNT} (S3 access)")
        containers = pod.get("containers") or []
        if not containers:
            p.append(f"{g}: no container")
            continue
        c = containers[0]
        if c.get("image") != IMAGE:
            p.append(f"{g}: image {c.get('image')!r} is not the platform image {IMAGE}")
        if not any((e.get("configMapRef") or {}).get("name") == ENV_CONFIGMAP for e in c.get("envFrom") or []):
            p.append(f"{g}: MLFLOW_TRACKING_URI and AWS settings not loaded from ConfigMap {ENV_CONFIGMAP}")
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for key in ("cpu", "memory"):
            if key not in lim or key not in req:
                p.append(f"{g}: resources.requests/limits.{key} missing")
            elif parse_quantity(req[key]) != parse_quantity(lim[key]):
                p.append(f"{g}: {key} request differs from limit (Ray sizes itself from the limit)")
        shm = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/dev/shm"]
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        empty_dir = (volumes.get(shm[0].get("name")) or {}).get("emptyDir") if shm else None
        if not empty_dir or empty_dir.get("medium") != "Memory" or "sizeLimit" not in empty_dir:
            p.append(f"{g}: /dev/shm is not a sized memory-backed emptyDir")
        elif "object-store-memory" in params and parse_quantity(params["object-store-memory"]) > parse_quantity(
            empty_dir["sizeLimit"]
        ):
            p.append(f"{g}: object-store-memory exceeds the /dev/shm size")
        gpus = lim.get(GPU)
        if name == "head":
            if gpus:
                p.append(f"{g}: the head must be a CPU pod")
            continue
        if gpus is None:
            continue
        if not isinstance(gpus, int) or gpus < 1 or req.get(GPU) != gpus:
            p.append(f"{g}: {GPU} limit must be a positive integer equal to the request")
        if not any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in pod.get("tolerations") or []):
            p.append(f"{g}: no toleration for the {GPU} taint")
        selector = pod.get("nodeSelector") or {}
        if not any(re.search(r"a100|p4d", str(v), re.I) for v in selector.values()):
            p.append(f"{g}: nodeSelector does not pick A100 nodes")
    if not any(group_gpus(g) for _, g in groups[1:]):
        p.append(f"{at}: no GPU worker group")
    return p


def kuberay_problems_in_doc(doc: dict, name: str) -> list[str]:
    kind = doc.get("kind")
    if kind not in {"RayCluster", "RayJob", "RayService"}:
        return []
    label = f"{name} {kind}/{doc['metadata']['name']}"
    spec = doc.get("spec") or {}
    clusters = ray_cluster_specs(doc)
    if not clusters:
        return [f"{label}: no Ray cluster spec"]
    at, cluster = clusters[0]
    p = ray_cluster_problems(cluster, f"{label} {at}")
    if doc["metadata"].get("namespace") != NAMESPACE:
        p.append(f"{label}: not in namespace {NAMESPACE}")
    workers = [g for _, g in ray_groups(cluster)[1:]]
    if kind == "RayCluster":
        if cluster.get("enableInTreeAutoscaling") is not True:
            p.append(f"{label}: autoscaling is off")
        if any(g.get("minReplicas") != 0 for g in workers):
            p.append(f"{label}: worker groups must scale from zero (minReplicas 0)")
        if all(group_gpus(g) for g in workers):
            p.append(f"{label}: no CPU worker group for ingestion")
    if kind == "RayJob":
        p += rayjob_problems(spec, cluster, label)
    if kind == "RayService":
        text = spec.get("serveConfigV2")
        if not isinstance(text, str):
            return [*p, f"{label}: no serveConfigV2"]
        p += serve_config_problems(text, f"{label} serveConfigV2")
        min_gpus = sum(group_gpus(g) * g.get("minReplicas", 0) for g in workers)
        if not p and serve_min_gpus(text) > min_gpus:
            p.append(f"{label}: the minimum replicas need {serve_min_gpus(text)} GPUs, the cluster keeps {min_gpus}")
    return p


def rayjob_problems(spec: dict, cluster: dict, label: str) -> list[str]:
    p = []
    argv = shlex.split(spec.get("entrypoint") or "")
    if len(argv) < 2 or argv[0] != "python" or not re.fullmatch(r"jobs/\w+\.py", argv[1]):
        return [f"{label}: entrypoint {spec.get('entrypoint')!r} is not `python jobs/<name>.py ...`"]
    flags = dict(zip(argv[2:], [*argv[3:], ""]))  # each token -> the token after it
    for flag in URI_FLAGS & set(flags):
        if not flags[flag].startswith("s3://"):
            p.append(f"{label}: {flag} {flags[flag]!r} is not on S3")
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
    except yaml.YAMLError as e:
        return [*p, f"{label}: runtimeEnvYAML does not parse: {e}"]
    if runtime_env.get("working_dir") != APP_HOME:
        p.append(f"{label}: runtime_env.working_dir is not the image's project folder {APP_HOME!r}")
    if {"pip", "conda", "uv", "container", "image_uri"} & set(runtime_env):
        p.append(f"{label}: runtime_env installs packages; the image already holds them")
    if spec.get("shutdownAfterJobFinishes") is not True:
        p.append(f"{label}: the job's cluster outlives the job (shutdownAfterJobFinishes)")
    submitter = ((spec.get("submitterPodTemplate") or {}).get("spec")) or {}
    submitter_images = [c.get("image") for c in submitter.get("containers") or []]
    if submitter.get("restartPolicy") != "Never" or submitter_images != [IMAGE]:
        p.append(f"{label}: the submitter pod must run the platform image once (it uploads working_dir)")
    workers = [g for _, g in ray_groups(cluster)[1:]]
    if "--use-gpu" in argv:  # Ray Train: one worker per GPU, all at once (a fixed-size group)
        started = sum(group_gpus(g) * g.get("replicas", 0) for g in workers)
        wanted = int(flags.get("--num-workers") or 0)
        if not 0 < wanted <= started:
            p.append(f"{label}: --num-workers {wanted} GPU workers, the cluster starts with {started} GPUs")
    if "--num-gpus" in flags:  # ingestion: CLIP actors, one per GPU, on autoscaled nodes
        reachable = sum(group_gpus(g) * g.get("maxReplicas", 0) for g in workers)
        if not 0 < int(flags["--num-gpus"]) <= reachable:
            p.append(f"{label}: --num-gpus {flags['--num-gpus']}, the cluster can reach {reachable} GPUs")
    return p


def kuberay_problems(path: Path) -> list[str]:
    return [p for doc in load_docs(path) for p in kuberay_problems_in_doc(doc, where(path))]
