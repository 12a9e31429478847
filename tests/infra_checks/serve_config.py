"""The Ray Serve config (serveConfigV2) against Serve's own schemas and the serve/ package."""

from __future__ import annotations

import ast

import yaml

from infra_checks.files import ROOT, SERVE_DEPLOYMENTS, SERVE_IMPORT_PATH, SERVE_INGRESS


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
