"""Strict validation against the Kubernetes schemas kubernetes-validate bundles (no network)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
from kubernetes_validate.utils import all_versions

from infra_checks.files import load_docs, where

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
