"""The desired children of an LLMDeployment, as pure functions of its body and the config.

Every child is named after the resource (the cache PVC gets a suffix), carries the common
labels and a controller owner reference (kopf.adopt), so deleting the LLMDeployment lets the
garbage collector take them all.
"""
import copy
import datetime
import socket

import kopf

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.pod import pod_template
from pagedserve.operator.spec import LLMDeploymentSpec

GROUP, VERSION, KIND, PLURAL = "pagedserve.io", "v1alpha1", "LLMDeployment", "llmdeployments"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = "pagedserve"
COMPONENT = "server"


def selector_labels(name: str) -> dict:
    """The Deployment's selector: it never changes (the API server would refuse that)."""
    return {"app.kubernetes.io/name": "pagedserve", "app.kubernetes.io/instance": name,
            "app.kubernetes.io/component": COMPONENT}


def labels(name: str) -> dict:
    return {**selector_labels(name), "app.kubernetes.io/managed-by": MANAGED_BY}


def selector_string(name: str) -> str:
    """status.selector, which the scale subresource hands to an HPA to find the pods."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def endpoint(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local:{port}/v1"


def cache_claim_name(name: str, spec: LLMDeploymentSpec) -> str | None:
    """The PVC the pods mount as the HF cache: an existing one, ours, or none (emptyDir)."""
    cache = spec.model_cache
    if cache is None:
        return None
    return cache.existing_claim or child_name("PersistentVolumeClaim", name)


def child_name(kind: str, name: str) -> str:
    """The name of an LLMDeployment's child of that kind (the operator's own cache PVC's name)."""
    return f"{name}-model-cache" if kind == "PersistentVolumeClaim" else name


def _meta(owner: dict, name: str | None = None) -> dict:
    return {"name": name or owner["metadata"]["name"], "namespace": owner["metadata"]["namespace"],
            "labels": labels(owner["metadata"]["name"])}


def deployment(owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig) -> dict:
    name = owner["metadata"]["name"]
    shared_rwo_cache = spec.model_cache is not None and spec.model_cache.access_mode != "ReadWriteMany"
    # a ReadWriteOnce cache cannot be mounted by an old and a new pod on two nodes at once,
    # and a surge pod would need spare GPUs: such rollouts replace pods instead
    strategy = ({"type": "Recreate", "rollingUpdate": None} if shared_rwo_cache else
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(owner),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": strategy,
            # a 70B first start (download, load) must not count as a stuck rollout
            "progressDeadlineSeconds": spec.startup_timeout_seconds + 600,
            "template": pod_template(spec, config, labels(name), cache_claim_name(name, spec)),
        },
    }


def service(owner: dict, spec: LLMDeploymentSpec) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(owner),
        "spec": {
            "type": spec.service_type,
            "selector": selector_labels(owner["metadata"]["name"]),
            "ports": [{"name": "http", "port": spec.service_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def horizontal_pod_autoscaler(owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig) -> dict:
    """Scales the LLMDeployment itself (its scale subresource), so spec.replicas stays the truth."""
    scaling = spec.autoscaling
    assert scaling is not None
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": owner["metadata"]["name"]},
            "minReplicas": scaling.min_replicas, "maxReplicas": scaling.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": config.hpa_metric},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target_requests_waiting)}}}],
        },
    }


def pod_disruption_budget(owner: dict, spec: LLMDeploymentSpec) -> dict:
    budget = spec.pod_disruption_budget
    assert budget is not None
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(owner),
        "spec": {"selector": {"matchLabels": selector_labels(owner["metadata"]["name"])},
                 "minAvailable": budget.get("minAvailable"), "maxUnavailable": budget.get("maxUnavailable")},
    }


def cache_claim(owner: dict, spec: LLMDeploymentSpec) -> dict:
    cache = spec.model_cache
    assert cache is not None and cache.size is not None
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": _meta(owner, cache_claim_name(owner["metadata"]["name"], spec)),
        "spec": {"accessModes": [cache.access_mode], "resources": {"requests": {"storage": cache.size}},
                 # absent, not None: the API server fills in the default class, which is no drift
                 **({"storageClassName": cache.storage_class_name} if cache.storage_class_name else {})},
    }


def desired_children(owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig) -> dict[str, dict | None]:
    """kind -> the child as it should be, or None where the spec asks for none of that kind."""
    children = {  # in apply order: the claim before the pods that mount it
        "PersistentVolumeClaim": (cache_claim(owner, spec)
                                  if spec.model_cache and not spec.model_cache.existing_claim else None),
        "Deployment": deployment(owner, spec, config),
        "Service": service(owner, spec),
        "HorizontalPodAutoscaler": horizontal_pod_autoscaler(owner, spec, config) if spec.autoscaling else None,
        "PodDisruptionBudget": pod_disruption_budget(owner, spec) if spec.pod_disruption_budget else None,
    }
    present = [child for child in children.values() if child is not None]
    kopf.adopt(present, owner=copy.deepcopy(owner))
    return children


def event(owner: dict, kind: str, reason: str, message: str, now: datetime.datetime | None = None) -> dict:
    """A core/v1 Event about the LLMDeployment (what `kubectl describe llmd` lists)."""
    meta = owner["metadata"]
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": owner.get("apiVersion", API_VERSION), "kind": KIND,
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": kind, "reason": reason, "message": message[:1024],
        "source": {"component": "pagedserve-operator"},
        "reportingComponent": "pagedserve.io/operator", "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }
