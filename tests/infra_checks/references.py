"""References between Kubernetes objects: ConfigMaps, ServiceAccounts, Secrets, Services, MLflow."""

from __future__ import annotations

import fnmatch
from urllib.parse import urlparse

from infra_checks.files import ENV_CONFIGMAP, INFRA, NAMESPACE, walk


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
