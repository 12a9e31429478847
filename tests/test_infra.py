"""Deployment configuration under infra/: YAML style, Ray's and Kubernetes' own validation, the fields the
platform relies on, references between objects, the image, and the absence of secrets.

Offline and fast: no Docker engine, no cluster, no network. Every checker returns a list of problems; the
real files must give none, and each checker is also run on a deliberately broken copy in tmp_path to show
that it can fail.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import posixpath
import re
import shlex
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.requirements import Requirement
from yamllint import config as yamllint_config
from yamllint import linter as yamllint_linter

ROOT = Path(__file__).resolve().parents[1]
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


# ------------------------------------------------------------------------------------------ yamllint

YAMLLINT_CONFIG = ROOT / ".yamllint"


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


@pytest.mark.parametrize("path", [*infra_yaml_files(), YAMLLINT_CONFIG], ids=where)
def test_yaml_is_lint_clean(path):
    assert lint_problems(path) == []
    assert load_docs(path), f"{where(path)} holds no YAML document"


def test_yamllint_rejects_a_broken_copy(tmp_path):
    text = (KUBERAY / "raycluster.yaml").read_text()
    broken = tmp_path / "raycluster.yaml"
    # a duplicated key (the first value would be dropped silently) and a trailing space
    broken.write_text(text.replace("  rayVersion: ", "  rayVersion: '2.0.0'\n  rayVersion: ", 1) + "x: 1 \n")
    problems = lint_problems(broken)
    assert any("key-duplicates" in p for p in problems), problems
    assert any("trailing-spaces" in p for p in problems), problems


def test_yamllint_also_checks_embedded_serve_config(tmp_path):
    docs = load_docs(KUBERAY / "rayservice.yaml")
    docs[0]["spec"]["serveConfigV2"] = "applications:\n  - name: a\n    name: b\n"
    problems = lint_problems(write_yaml(tmp_path / "rayservice.yaml", docs))
    assert any("serveConfigV2" in p and "key-duplicates" in p for p in problems), problems


# --------------------------------------------------------------------- Kubernetes schemas (built in)

K8S_VERSIONS = sorted({".".join(v.split(".")[:2]) for v in all_versions()}, key=lambda v: tuple(map(int, v.split("."))))
# The oldest and the newest Kubernetes whose schemas kubernetes-validate bundles (no network needed).
K8S_CHECKED_VERSIONS = (K8S_VERSIONS[0], K8S_VERSIONS[-1])


def ray_cluster_specs(doc: dict) -> list[tuple[str, dict]]:
    """The Ray cluster spec inside a KubeRay resource, with where it sits."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayCluster":
        return [("spec", spec)]
    key = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(doc.get("kind"), "")
    return [(f"spec.{key}", spec[key])] if isinstance(spec.get(key), dict) else []


def ray_groups(cluster: dict) -> list[tuple[str, dict]]:
    head = [("head", cluster.get("headGroupSpec") or {})]
    return head + [(g.get("groupName", "?"), g) for g in cluster.get("workerGroupSpecs") or []]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """Every pod template inside a KubeRay resource (head, worker groups, job submitter)."""
    out = []
    for at, cluster in ray_cluster_specs(doc):
        for name, group in ray_groups(cluster):
            out.append((f"{at}[{name}].template", group.get("template") or {}))
    submitter = (doc.get("spec") or {}).get("submitterPodTemplate")
    if submitter is not None:
        out.append(("spec.submitterPodTemplate", submitter))
    return out


def k8s_schema_problems(doc: dict, name: str) -> list[str]:
    """Strict validation against the bundled Kubernetes schemas. KubeRay resources have no schema there:
    their pod templates are validated instead, wrapped in a core PodTemplate object."""
    if doc.get("apiVersion", "").startswith("ray.io/"):
        objects = [
            (f"{name} {doc['kind']}/{doc['metadata']['name']} {at}", tpl_as_pod_template(tpl))
            for at, tpl in pod_templates(doc)
        ]
        if not objects:
            return [f"{name}: {doc.get('kind')} has no pod template to check"]
    else:
        objects = [(f"{name} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}", doc)]
    problems = []
    for label, obj in objects:
        for version in K8S_CHECKED_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                field = ".".join(str(p) for p in e.path)
                problems.append(f"{label}: {field}: {e.message} (Kubernetes {version})")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{label}: {e.message}")
    return problems


def tpl_as_pod_template(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}


def schema_problems(path: Path) -> list[str]:
    return [p for doc in load_docs(path) for p in k8s_schema_problems(doc, where(path))]


@pytest.mark.parametrize("path", k8s_files(), ids=where)
def test_kubernetes_objects_match_the_kubernetes_schemas(path):
    assert schema_problems(path) == []


def test_core_kinds_are_present_and_checked():
    kinds = {d["kind"] for d in k8s_docs()}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "StatefulSet", "Namespace"} <= kinds
    assert {"RayCluster", "RayJob", "RayService"} <= kinds
    # Secrets are created out of band (infra/README.md), never shipped as manifests.
    assert "Secret" not in kinds
    assert len(K8S_CHECKED_VERSIONS) == 2 and K8S_CHECKED_VERSIONS[0] != K8S_CHECKED_VERSIONS[1]


def test_schema_check_rejects_broken_copies(tmp_path):
    # (the schema check reports the first error of each object, so one fault per copy)
    docs = load_docs(MLFLOW_K8S / "mlflow.yaml")
    next(d for d in docs if d["kind"] == "Deployment")["spec"]["replicas"] = "two"
    problems = schema_problems(write_yaml(tmp_path / "mlflow.yaml", docs))
    assert any("replicas" in p and "'two'" in p for p in problems), problems

    docs = load_docs(MLFLOW_K8S / "mlflow.yaml")
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolcy"] = "Always"  # a typo: strict mode knows no such field
    problems = schema_problems(write_yaml(tmp_path / "mlflow.yaml", docs))
    assert any("imagePullPolcy" in p for p in problems), problems

    # inside a KubeRay resource the pod templates are checked with the same schemas
    docs = load_docs(KUBERAY / "raycluster.yaml")
    docs[0]["spec"]["workerGroupSpecs"][1]["template"]["spec"]["tolerations"][0]["efect"] = "NoSchedule"
    problems = schema_problems(write_yaml(tmp_path / "raycluster.yaml", docs))
    assert any("efect" in p and "[a100]" in p for p in problems), problems

    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert k8s_schema_problems(unknown, "x.yaml")


# ---------------------------------------------------------------- Dockerfile facts (used below too)


def _dockerfile_lines(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        buf = f"{buf} {line[:-1].strip()}" if line.endswith("\\") else f"{buf} {line}"
        if not line.endswith("\\"):
            instr, _, args = buf.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
            buf = ""
    return out


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def dockerfile_facts(path: Path = DOCKERFILE) -> dict:
    env: dict[str, str] = {}
    facts: dict = {"copy_sources": [], "run": [], "from": None, "user": None, "workdir": None}
    for instr, args in _dockerfile_lines(path):
        if instr == "ARG" and "=" in args:
            k, _, v = args.partition("=")
            env[k] = v.strip('"')
        elif instr == "FROM":
            facts["from"] = _expand(args.split()[0], env)
        elif instr == "ENV":
            for item in shlex.split(args):
                k, _, v = item.partition("=")
                env[k] = _expand(v, env)
        elif instr == "WORKDIR":
            facts["workdir"] = _expand(args, env)
        elif instr == "USER":
            facts["user"] = args
        elif instr == "COPY":
            parts = [a for a in shlex.split(args) if not a.startswith("--")]
            facts["copy_sources"] += parts[:-1]
        elif instr == "RUN":
            facts["run"].append(_expand(args, env))
    facts["env"] = env
    return facts


APP_HOME = dockerfile_facts()["env"].get("APP_HOME", "")


# ----------------------------------------------------------------------- KubeRay: the platform's fields


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


def serve_config_problems(text: str, at: str = "serveConfigV2") -> list[str]:
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    try:
        cfg = yaml.safe_load(text)
        ServeDeploySchema.model_validate(cfg)
    except Exception as e:
        return [f"{at}: Ray Serve rejects the config: {e}"]
    p = []

    def unknown(obj: dict, model, label: str) -> None:
        # Ray ignores unknown keys; a typo (max_queued_request) would silently fall back to a default.
        extra = set(obj) - set(model.model_fields)
        if extra:
            p.append(f"{at}: {label}: unknown fields {sorted(extra)}")

    unknown(cfg, ServeDeploySchema, "top level")
    apps = cfg.get("applications") or []
    if len(apps) != 1:
        return [*p, f"{at}: expected one application, found {len(apps)}"]
    app = apps[0]
    unknown(app, ServeApplicationSchema, "application")
    if app.get("import_path") != SERVE_IMPORT_PATH:
        p.append(f"{at}: import_path {app.get('import_path')!r} is not {SERVE_IMPORT_PATH!r}")
    uri = ((app.get("runtime_env") or {}).get("env_vars") or {}).get("CLIPSYNTH_MODEL_URI", "")
    if not str(uri).startswith("models:/"):
        p.append(f"{at}: CLIPSYNTH_MODEL_URI {uri!r} is not an MLflow models:/ URI")
    deployments = {d.get("name"): d for d in app.get("deployments") or []}
    if set(deployments) != SERVE_DEPLOYMENTS:
        p.append(f"{at}: deployments {sorted(deployments)} are not the app's {sorted(SERVE_DEPLOYMENTS)}")
    gpu_per_set = 0.0
    for name, d in deployments.items():
        unknown(d, DeploymentSchema, name)
        unknown(d.get("ray_actor_options") or {}, RayActorOptionsSchema, f"{name}.ray_actor_options")
        auto = d.get("autoscaling_config")
        if not isinstance(auto, dict):
            p.append(f"{at}: {name} has no autoscaling_config")
        else:
            unknown(auto, AutoscalingConfig, f"{name}.autoscaling_config")
            try:
                AutoscalingConfig(**auto)
            except Exception as e:
                p.append(f"{at}: {name}.autoscaling_config: {e}")
        if not isinstance(d.get("max_queued_requests"), int) or d["max_queued_requests"] < 1:
            p.append(f"{at}: {name} has no bounded max_queued_requests")
        gpus = (d.get("ray_actor_options") or {}).get("num_gpus", 0)
        if name == SERVE_INGRESS:
            if gpus:
                p.append(f"{at}: the ingress should not hold a GPU")
        elif not 0 < gpus < 1:
            p.append(f"{at}: {name} num_gpus {gpus} is not a fraction of a GPU")
        else:
            gpu_per_set += gpus
    if gpu_per_set > 1:
        p.append(f"{at}: one replica of each model deployment needs {gpu_per_set} GPUs, more than one GPU")
    return p


def serve_min_gpus(text: str) -> float:
    app = (yaml.safe_load(text).get("applications") or [{}])[0]
    return sum(
        (d.get("ray_actor_options") or {}).get("num_gpus", 0)
        * (d.get("autoscaling_config") or {}).get("min_replicas", 1)
        for d in app.get("deployments") or []
    )


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


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("ray*.yaml")), ids=where)
def test_kuberay_resources_have_what_the_platform_relies_on(path):
    assert kuberay_problems(path) == []


def test_kuberay_files_hold_the_expected_resources():
    by_kind: dict[str, list[dict]] = {}
    for doc in k8s_docs():
        by_kind.setdefault(doc["kind"], []).append(doc)
    assert len(by_kind["RayCluster"]) == 1 and len(by_kind["RayService"]) == 1
    entrypoints = sorted(shlex.split(d["spec"]["entrypoint"])[1] for d in by_kind["RayJob"])
    assert entrypoints == ["jobs/preprocess.py", "jobs/train_vggsound.py"]
    # the long-lived cluster has an A100 group of whole p4d nodes and a CPU group, both from zero
    cluster = by_kind["RayCluster"][0]["spec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert group_gpus(groups["a100"]) == 8 and groups["a100"]["minReplicas"] == 0
    assert any(group_gpus(g) == 0 for g in groups.values())


def test_kuberay_check_rejects_broken_copies(tmp_path):
    docs = load_docs(KUBERAY / "raycluster.yaml")
    spec = docs[0]["spec"]
    a100 = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "a100")
    del a100["template"]["spec"]["containers"][0]["resources"]["limits"][GPU]
    del a100["template"]["spec"]["containers"][0]["resources"]["requests"][GPU]
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.60.0"
    spec["headGroupSpec"]["template"]["spec"]["volumes"] = []
    del spec["authOptions"]
    problems = kuberay_problems(write_yaml(tmp_path / "raycluster.yaml", docs))
    assert any("no GPU worker group" in p for p in problems), problems
    assert any("[head]: image" in p for p in problems), problems
    assert any("/dev/shm" in p for p in problems), problems
    assert any("token authentication" in p for p in problems), problems

    docs = load_docs(KUBERAY / "rayjob-train.yaml")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("--num-workers 8", "--num-workers 16")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("s3://clipsynth-data/ray-results", "/tmp/r")
    docs[0]["spec"]["runtimeEnvYAML"] = "pip: [torch]\n"
    docs[0]["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.60.0"
    problems = kuberay_problems(write_yaml(tmp_path / "rayjob-train.yaml", docs))
    assert any("--num-workers 16" in p for p in problems), problems
    assert any("--storage-path" in p and "not on S3" in p for p in problems), problems
    assert any("working_dir" in p for p in problems), problems
    assert any("installs packages" in p for p in problems), problems
    assert any("submitter pod" in p for p in problems), problems

    docs = load_docs(KUBERAY / "rayjob-preprocess.yaml")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("--num-gpus 8", "--num-gpus 16")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("s3://clipsynth-data/raw", "/data/raw")
    problems = kuberay_problems(write_yaml(tmp_path / "rayjob-preprocess.yaml", docs))
    assert any("--num-gpus 16" in p for p in problems), problems
    assert any("--input '/data/raw" in p for p in problems), problems
    assert any("--labels '/data/raw" in p for p in problems), problems

    docs = load_docs(KUBERAY / "rayservice.yaml")
    docs[0]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = 0
    problems = kuberay_problems(write_yaml(tmp_path / "rayservice.yaml", docs))
    assert any("the minimum replicas need 0.85 GPUs" in p for p in problems), problems


# --------------------------------------------------------------------------------- Ray Serve config


def rayservice_serve_config() -> str:
    return load_docs(KUBERAY / "rayservice.yaml")[0]["spec"]["serveConfigV2"]


def test_serve_config_matches_the_app():
    text = rayservice_serve_config()
    assert serve_config_problems(text) == []
    app = yaml.safe_load(text)["applications"][0]
    assert app["import_path"] == "serve:app"
    assert {d["name"] for d in app["deployments"]} == SERVE_DEPLOYMENTS


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda a: a.update(import_path="serve.app:application"), "import_path"),
        (lambda a: a["deployments"][1].update(name="ClipEncoderX"), "deployments"),
        (lambda a: a["deployments"][1].update(max_queued_request=3), "unknown fields ['max_queued_request']"),
        (lambda a: a["deployments"][2]["ray_actor_options"].update(num_gpus=2), "not a fraction"),
        (lambda a: a["deployments"][2]["ray_actor_options"].update(num_gpus=0.95), "more than one GPU"),
        (lambda a: a["deployments"][2]["autoscaling_config"].update(min_replicas=40), "autoscaling_config"),
        (lambda a: a["deployments"][3].pop("max_queued_requests"), "max_queued_requests"),
        (lambda a: a["runtime_env"]["env_vars"].update(CLIPSYNTH_MODEL_URI="/models/x"), "models:/"),
        (lambda a: a["deployments"][0]["ray_actor_options"].update(num_gpus=-1), "Ray Serve rejects"),
    ],
)
def test_serve_config_check_rejects_broken_configs(mutate, expected):
    cfg = yaml.safe_load(rayservice_serve_config())
    mutate(cfg["applications"][0])
    problems = serve_config_problems(yaml.safe_dump(cfg))
    assert any(expected in p for p in problems), problems


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _name_kwarg(call: ast.AST) -> str | None:
    if isinstance(call, ast.Call):
        for kw in call.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                return kw.value.value
    return None


def serve_code_deployments() -> set[str]:
    """Deployment names the serve/ package defines: @serve.deployment classes (or name=...) and
    .options(name=...)."""
    names: set[str] = set()
    for path in sorted((ROOT / "serve").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for deco in node.decorator_list:
                    if _dotted(deco).split(".")[-1] == "deployment":
                        names.add(_name_kwarg(deco) or node.name)
            elif isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] == "options":
                name = _name_kwarg(node)
                if name:
                    names.add(name)
    return names


def test_serve_config_names_the_deployments_the_serve_package_defines():
    init = ROOT / "serve" / "__init__.py"
    names = serve_code_deployments()
    assert init.exists() and names, "serve/ defines no Serve deployments"
    assert names >= SERVE_DEPLOYMENTS, f"serve/ defines {sorted(names)}"
    # `serve:app` needs `app` reachable from serve/__init__.py: assigned, imported, or served lazily by a
    # module-level __getattr__ that lists it in __all__ (so that importing serve stays cheap).
    tree = ast.parse(init.read_text())
    bound = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    bound |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    lazy = any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)
    exported = set()
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets):
            exported = {e.value for e in n.value.elts if isinstance(e, ast.Constant)}
    if "app" not in bound:
        assert lazy and "app" in exported, "serve/__init__.py neither binds nor lazily exports `app`"
        app_module = ast.parse((ROOT / "serve" / "application.py").read_text())
        assigned = {
            t.id for n in app_module.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
        }
        assert "app" in assigned


def unknown_flags(argv: list[str], sources: str) -> list[str]:
    """Flags of a job command line that its code does not know: neither the literal `--flag` nor (for
    parsers generated from config dataclasses) a field named like it appears in the sources."""
    return [
        flag
        for flag in (a for a in argv if a.startswith("--"))
        if f'"{flag}"' not in sources
        and f"'{flag}'" not in sources
        and not re.search(rf"\b{flag[2:].replace('-', '_')}\s*:", sources)
    ]


def job_sources(script: Path) -> str:
    return script.read_text() + "".join(p.read_text() for p in sorted((ROOT / "platform").rglob("*.py")))


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("rayjob-*.yaml")), ids=where)
def test_rayjob_flags_exist_in_the_job(path):
    argv = shlex.split(load_docs(path)[0]["spec"]["entrypoint"])
    script = ROOT / argv[1]
    if not script.exists():
        pytest.skip(f"{argv[1]} is not written yet")
    assert unknown_flags(argv[2:], job_sources(script)) == [], argv[1]


def test_flag_check_rejects_unknown_flags(tmp_path):
    script = tmp_path / "job.py"
    script.write_text('parser.add_argument("--input")\n@dataclass\nclass C:\n    storage_path: str = ""\n')
    argv = ["--input", "s3://a", "--storage-path", "s3://b", "--num-wrokers", "8"]
    assert unknown_flags(argv, script.read_text()) == ["--num-wrokers"]


# ----------------------------------------------------------------------------- Ray cluster launcher


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


def test_launcher_config_passes_rays_validation():
    assert launcher_problems(LAUNCHER) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.update(head_node_type="nope"), "Ray rejects"),
        (lambda c: c.update(max_worker=3), "Ray rejects"),
        (lambda c: c["available_node_types"]["gpu_a100"].update(min_workers=1), "scale from zero"),
        (lambda c: c["available_node_types"]["gpu_a100"]["resources"].update(GPU=4), "p4d.24xlarge"),
        (lambda c: c.pop("setup_commands"), "installs Ray"),
        (lambda c: c["worker_start_ray_commands"].__setitem__(1, "ray start --address=$RAY_HEAD_IP:6379"), "token"),
        (lambda c: c["file_mounts"].pop("~/clipsynth.env"), "environment file"),
    ],
)
def test_launcher_check_rejects_broken_copies(tmp_path, mutate, expected):
    cfg = yaml.safe_load(LAUNCHER.read_text())
    mutate(cfg)
    problems = launcher_problems(write_yaml(tmp_path / "cluster.yaml", [cfg]))
    assert any(expected in p for p in problems), problems


# ------------------------------------------------------------------------- references between objects


def reference_problems(docs: list[dict]) -> list[str]:
    configmaps = {
        (d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("data") or {}
        for d in docs
        if d["kind"] == "ConfigMap"
    }
    accounts = {(d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"}
    services = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs if d["kind"] == "Service"}
    readme = (INFRA / "README.md").read_text()
    p = []
    for doc in docs:
        ns = doc["metadata"].get("namespace")
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        if ns != NAMESPACE and doc["kind"] != "Namespace":
            p.append(f"{label}: namespace {ns!r} is not {NAMESPACE}")
        for _, key, value in walk(doc):
            if key == "configMapRef" and (ns, value.get("name")) not in configmaps:
                p.append(f"{label}: ConfigMap {value.get('name')} is not defined")
            if key == "configMapKeyRef" and value.get("key") not in configmaps.get((ns, value.get("name")), {}):
                p.append(f"{label}: ConfigMap key {value.get('name')}/{value.get('key')} is not defined")
            if key == "serviceAccountName" and (ns, value) not in accounts:
                p.append(f"{label}: ServiceAccount {value} is not defined")
            if key in ("secretKeyRef", "secretRef") and f"create secret generic {value.get('name')}" not in readme:
                p.append(f"{label}: Secret {value.get('name')} is not documented in infra/README.md")
    # Deployments/StatefulSets select their own pods; Services select some pod and name its port
    pods = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            labels = d["spec"]["template"]["metadata"].get("labels") or {}
            if not set(d["spec"]["selector"]["matchLabels"].items()) <= set(labels.items()):
                p.append(f"{d['kind']}/{d['metadata']['name']}: selector does not match its pod labels")
            pods.append((labels, d["spec"]["template"]["spec"]))
    for (_, name), svc in services.items():
        matched = [spec for labels, spec in pods if set(svc["spec"]["selector"].items()) <= set(labels.items())]
        if not matched:
            p.append(f"Service/{name}: selects no pod")
            continue
        port_names = {pt.get("name") for c in matched[0]["containers"] for pt in c.get("ports") or []}
        for port in svc["spec"]["ports"]:
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in port_names:
                p.append(f"Service/{name}: targetPort {port['targetPort']} is no container port")
    # MLFLOW_TRACKING_URI reaches the MLflow Service, and MLflow accepts that Host header
    uri = urlparse(configmaps.get((NAMESPACE, ENV_CONFIGMAP), {}).get("MLFLOW_TRACKING_URI", ""))
    host_parts = (uri.hostname or "").split(".")
    svc = services.get((host_parts[1] if len(host_parts) > 1 else NAMESPACE, host_parts[0]))
    if not svc or uri.port not in {pt["port"] for pt in svc["spec"]["ports"]}:
        p.append(f"MLFLOW_TRACKING_URI {uri.geturl()!r} is no Service port in the manifests")
    allowed = configmaps.get((NAMESPACE, "mlflow-config"), {}).get("MLFLOW_SERVER_ALLOWED_HOSTS", "")
    patterns = [a.strip() for a in allowed.split(",") if a.strip()]
    host = uri.netloc
    if not any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in patterns):
        p.append(f"MLflow would answer 403 to Host {host!r}: not in MLFLOW_SERVER_ALLOWED_HOSTS")
    return p


def test_references_between_objects_resolve():
    assert reference_problems(k8s_docs()) == []


def test_reference_check_rejects_broken_copies():
    docs = copy.deepcopy(k8s_docs())
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlflow-config":
            d["data"]["MLFLOW_SERVER_ALLOWED_HOSTS"] = "mlflow.example.com"
        if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow":
            d["spec"]["ports"][0]["targetPort"] = "web"
    docs = [d for d in docs if not (d["kind"] == "ServiceAccount" and d["metadata"]["name"] == RAY_SERVICE_ACCOUNT)]
    problems = reference_problems(docs)
    assert any("403" in p for p in problems), problems
    assert any("targetPort web" in p for p in problems), problems
    assert any(f"ServiceAccount {RAY_SERVICE_ACCOUNT} is not defined" in p for p in problems), problems


# ------------------------------------------------------------------------------------------- secrets

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


@pytest.mark.parametrize("path", scanned_files(), ids=where)
def test_no_secret_in_infra(path):
    assert secret_problems(path) == []


def test_secrets_reach_pods_only_by_reference():
    refs = [(k, v) for d in k8s_docs() for _, k, v in walk(d) if k in ("secretKeyRef", "secretRef")]
    assert {v["name"] for _, v in refs} == {"mlflow-postgres", "clipsynth-s3", "mlflow-s3"}
    # the S3-key Secrets are optional (IRSA needs none); the database password is required
    assert all(v.get("optional") is True for k, v in refs if k == "secretRef")


BROKEN = {
    "env literal": (
        "mlflow.yaml",
        lambda d: d[2]["spec"]["template"]["spec"]["containers"][0]["env"][0].update(value="hunter22", valueFrom=None),
        "env PGPASSWORD holds a literal value",
    ),
    "configmap key": ("mlflow.yaml", lambda d: d[0]["data"].update(AWS_SECRET_ACCESS_KEY="abc/def"), "literal value"),
    "secret object": (
        "mlflow.yaml",
        lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"x": "y"}}),
        "Secret manifest",
    ),
    "uri": ("mlflow.yaml", lambda d: d[0]["data"].update(DB="postgresql://mlflow:pw@db:5432/mlflow"), "in a URI"),
    "access key": ("mlflow.yaml", lambda d: d[0]["data"].update(KEY_ID="AKIA" + "Q" * 16), "AWS access key id"),
    "runtime env": (
        "rayservice.yaml",
        lambda d: d[0]["spec"].update(
            serveConfigV2="applications:\n- runtime_env:\n    env_vars:\n      MLFLOW_TRACKING_TOKEN: abc\n"
        ),
        "literal",
    ),
    "command": (
        "cluster.yaml",
        lambda d: d[0]["setup_commands"].append("export RAY_AUTH_TOKEN=abcdef"),
        "RAY_AUTH_TOKEN",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_secret_scan_rejects_broken_copies(tmp_path, case):
    filename, mutate, expected = BROKEN[case]
    source = {"mlflow.yaml": MLFLOW_K8S, "rayservice.yaml": KUBERAY, "cluster.yaml": LAUNCHER.parent}[filename]
    docs = load_docs(source / filename)
    mutate(docs)
    problems = secret_problems(write_yaml(tmp_path / filename, docs))
    assert any(expected in p for p in problems), problems


def test_secret_scan_reads_env_files_and_dockerfiles(tmp_path):
    env = tmp_path / "clipsynth.env"
    env.write_text("MLFLOW_TRACKING_URI=http://mlflow:5000\nPOSTGRES_PASSWORD=\n# AWS_SECRET_ACCESS_KEY=x\n")
    assert secret_problems(env) == []  # empty and commented-out values are fine
    env.write_text("POSTGRES_PASSWORD=s3cret\n")
    assert secret_problems(env) == ["clipsynth.env: POSTGRES_PASSWORD is assigned a literal value"]
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM x\nENV HF_TOKEN=hf_abc\n")
    assert secret_problems(dockerfile)


# ------------------------------------------------------------------------------- image and context


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
    "platform/schema.py",
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


def test_dockerignore_keeps_the_context_to_what_the_image_needs():
    assert context_problems(DOCKERIGNORE) == []
    rules = dockerignore_rules(DOCKERIGNORE)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    sent = {f.split("/")[0] for f in tracked if in_context(f, rules)}
    assert sent <= {"pyproject.toml", "README.md", "clipsynth_core", "platform", "jobs", "serve"}


def test_dockerignore_check_rejects_a_broken_copy(tmp_path):
    broken = tmp_path / ".dockerignore"
    broken.write_text("# no allowlist\n.git\n*.pyc\nserve\n")
    problems = context_problems(broken)
    assert ".venv/bin/python is sent to the build context" in problems
    assert "serve/__init__.py is left out of the build context" in problems
    assert "COPY serve: excluded by .dockerignore" in problems


def test_dockerfile_builds_the_platform_image():
    facts = dockerfile_facts()
    assert facts["from"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    runs = " ".join(facts["run"])
    for package in ("ffmpeg", "fluidsynth", "timgm6mb-soundfont"):
        assert re.search(rf"apt-get install[^&]*\b{package}\b", runs), package
    assert "pip install --no-deps -e ." in runs and "['project']['dependencies']" in runs
    # the code the editable install maps (pyproject's package-dir) and the entry points are all copied
    for src in ("clipsynth_core", "platform", "jobs", "serve", "pyproject.toml", "README.md"):
        assert src in facts["copy_sources"], src
        assert (ROOT / src).exists(), src
    assert facts["workdir"] == APP_HOME == facts["env"]["PYTHONPATH"] == "/home/ray/clipsynth"
    assert facts["user"] == "ray"
    # the torch pins installed first satisfy the project's own requirements (pip then keeps them)
    requirements = {
        Requirement(r).name: Requirement(r)
        for r in re.findall(r'^\s*"([^"]+)",', (ROOT / "pyproject.toml").read_text(), re.M)
        if re.match(r"torch", r)
    }
    pins = [Requirement(p) for p in facts["env"]["TORCH_PINS"].split()]
    assert {p.name for p in pins} == {"torch", "torchvision", "torchaudio"}
    for pin in pins:
        version = next(iter(pin.specifier)).version
        assert requirements[pin.name].specifier.contains(version), f"{pin} is outside {requirements[pin.name]}"
    # the MLflow server runs the client's MLflow version
    mlflow = dockerfile_facts(INFRA / "mlflow" / "Dockerfile")
    assert mlflow["env"]["MLFLOW_VERSION"] == MLFLOW_VERSION


def test_images_are_the_same_everywhere():
    images = {v for d in k8s_docs() if d["apiVersion"].startswith("ray.io/") for _, k, v in walk(d) if k == "image"}
    assert images == {IMAGE}
    mlflow = {v for d in load_docs(MLFLOW_K8S / "mlflow.yaml") for _, k, v in walk(d) if k == "image"}
    compose = yaml.safe_load((INFRA / "mlflow" / "docker-compose.yaml").read_text())
    assert mlflow == {compose["services"]["mlflow"]["image"]} == {f"clipsynth-mlflow:{MLFLOW_VERSION}"}
    assert yaml.safe_load(LAUNCHER.read_text())["docker"]["image"].endswith(f"/{IMAGE}")


# ------------------------------------------------------------------------------------ docs/scaling.md


def test_scaling_doc_figures_follow_from_the_schema_and_the_paper():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    tree = ast.parse((ROOT / "clipsynth_core" / "mel.py").read_text())
    mel_cfg = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "MelConfig")
    mel = {
        s.target.id: ast.literal_eval(s.value)
        for s in mel_cfg.body
        if isinstance(s, ast.AnnAssign) and isinstance(s.value, ast.Constant)
    }
    frames = (10 * mel["sample_rate"] - mel["n_fft"]) // mel["hop_length"] + 1
    assert f"{mel['n_mels']} x {frames}" in doc
    rest = 10 * 15_000 + 10 * 512 * 4 + 512 * 4 + 290  # JPEG frames, embeddings, text embedding, metadata
    chunks_per_1000h = 1000 * 3600 // 10
    for bytes_per_value in (4, 2):
        per_chunk = mel["n_mels"] * frames * bytes_per_value + rest
        assert f"{per_chunk:,}" in doc
        assert f"{per_chunk * chunks_per_1000h / 1e9:.1f} GB" in doc
    audio = 10 * mel["sample_rate"] * 2  # the int16 PCM column
    assert f"+{audio:,}" in doc
    assert f"{(mel['n_mels'] * frames * 4 + rest + audio) * chunks_per_1000h / 1e9:.1f} GB" in doc
    for steps, hours in ((100_000, 12), (500_000, 48), (500_000, 72)):
        assert f"{steps / hours:,.0f}" in doc
    assert f"{3 * 48 + 72} A100-hours" in doc
    # estimates are marked and point to the benchmark results that will replace them
    assert doc.count("[E") >= 10 and "benchmarks/results/*.json" in doc
