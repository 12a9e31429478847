"""Deployment configuration under infra/: YAML style, Ray's and Kubernetes' own validation, the fields the
platform relies on, references between objects, the image, and the absence of secrets.

Offline and fast: no Docker engine, no cluster, no network. Every checker returns a list of problems; the
real files must give none, and each checker is also run on a deliberately broken copy in tmp_path to show
that it can fail.
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
import subprocess
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from infra_checks.docker_context import context_problems, dockerignore_rules, in_context
from infra_checks.dockerfile import APP_HOME, dockerfile_facts
from infra_checks.files import (
    DOCKERIGNORE,
    GPU,
    IMAGE,
    INFRA,
    KUBERAY,
    LAUNCHER,
    MLFLOW_K8S,
    MLFLOW_VERSION,
    RAY_SERVICE_ACCOUNT,
    RAY_VERSION,
    ROOT,
    SERVE_DEPLOYMENTS,
    YAMLLINT_CONFIG,
    infra_yaml_files,
    k8s_docs,
    k8s_files,
    load_docs,
    walk,
    where,
    write_yaml,
)
from infra_checks.job_flags import job_sources, unknown_flags
from infra_checks.k8s_schema import K8S_CHECKED_VERSIONS, k8s_schema_problems, schema_problems
from infra_checks.kuberay import group_gpus, kuberay_problems
from infra_checks.launcher import launcher_problems
from infra_checks.references import reference_problems
from infra_checks.secret_scan import scanned_files, secret_problems
from infra_checks.serve_config import serve_code_deployments, serve_config_problems
from infra_checks.yaml_lint import lint_problems


def assert_reports(problems: list[str], *fragments: str) -> None:
    """Each fragment is in one of the problems a checker reported (on a deliberately broken copy)."""
    missing = [f for f in fragments if not any(f in p for p in problems)]
    assert not missing, f"not reported: {missing}; reported: {problems}"


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
    assert_reports(problems, "key-duplicates", "trailing-spaces")


def test_yamllint_also_checks_embedded_serve_config(tmp_path):
    docs = load_docs(KUBERAY / "rayservice.yaml")
    docs[0]["spec"]["serveConfigV2"] = "applications:\n  - name: a\n    name: b\n"
    problems = lint_problems(write_yaml(tmp_path / "rayservice.yaml", docs))
    assert any("serveConfigV2" in p and "key-duplicates" in p for p in problems), problems


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
    assert_reports(problems, "no GPU worker group", "[head]: image", "/dev/shm", "token authentication")

    docs = load_docs(KUBERAY / "rayjob-train.yaml")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("--num-workers 8", "--num-workers 16")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("s3://clipsynth-data/ray-results", "/tmp/r")
    docs[0]["spec"]["runtimeEnvYAML"] = "pip: [torch]\n"
    docs[0]["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.60.0"
    problems = kuberay_problems(write_yaml(tmp_path / "rayjob-train.yaml", docs))
    assert any("--num-workers 16" in p for p in problems), problems
    assert any("--storage-path" in p and "not on S3" in p for p in problems), problems
    assert_reports(problems, "working_dir", "installs packages", "submitter pod")

    docs = load_docs(KUBERAY / "rayjob-preprocess.yaml")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("--num-gpus 8", "--num-gpus 16")
    docs[0]["spec"]["entrypoint"] = docs[0]["spec"]["entrypoint"].replace("s3://clipsynth-data/raw", "/data/raw")
    problems = kuberay_problems(write_yaml(tmp_path / "rayjob-preprocess.yaml", docs))
    assert_reports(problems, "--num-gpus 16", "--input '/data/raw", "--labels '/data/raw")

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
    assert_reports(problems, "403", "targetPort web")
    assert any(f"ServiceAccount {RAY_SERVICE_ACCOUNT} is not defined" in p for p in problems), problems


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
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = {Requirement(r).name: Requirement(r) for r in dependencies if re.match(r"torch", r)}
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
