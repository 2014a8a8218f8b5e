"""The desired children of an LLMDeployment, as pure functions of its body and the config.

Every child is named after the resource (the cache PVC gets a suffix), carries the common
labels (labels.py) and a controller owner reference (kopf.adopt), so deleting the LLMDeployment
lets the garbage collector take them all. Each kind has its own small builder (pool.py and
scaling.py hold the ecosystem's kinds); build_children lists them in apply order.
"""

import copy
import datetime
import socket

import kopf

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.labels import (
    API_VERSION,
    KIND,
    child_name,
    meta,
    pod_labels,
    selector_labels,
)
from pagedserve.operator.lws import leader_worker_set, serving_selector
from pagedserve.operator.pod import pod_template
from pagedserve.operator.pool import inference_pool
from pagedserve.operator.scaling import autoscalers
from pagedserve.operator.spec import LLMDeploymentSpec


def endpoint(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local:{port}/v1"


def cache_claim_name(name: str, spec: LLMDeploymentSpec) -> str | None:
    """The PVC the pods mount as the HF cache: an existing one, ours, or none (emptyDir)."""
    cache = spec.model_cache
    if cache is None:
        return None
    return cache.existing_claim or child_name("PersistentVolumeClaim", name)


def deployment(owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig) -> dict:
    name = owner["metadata"]["name"]
    shared_rwo_cache = (
        spec.model_cache is not None and spec.model_cache.access_mode != "ReadWriteMany"
    )
    # a ReadWriteOnce cache cannot be mounted by an old and a new pod on two nodes at once,
    # and a surge pod would need spare GPUs: such rollouts replace pods instead
    strategy = (
        {"type": "Recreate", "rollingUpdate": None}
        if shared_rwo_cache
        else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(owner),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "strategy": strategy,
            # a 70B first start (download, load) must not count as a stuck rollout
            "progressDeadlineSeconds": spec.startup_timeout_seconds + 600,
            "template": pod_template(spec, config, pod_labels(name), cache_claim_name(name, spec)),
        },
    }


def service(owner: dict, spec: LLMDeploymentSpec) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(owner),
        "spec": {
            "type": spec.service_type,
            "selector": serving_selector(owner["metadata"]["name"], spec.multi_node),
            "ports": [
                {"name": "http", "port": spec.service_port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def pod_disruption_budget(owner: dict, spec: LLMDeploymentSpec) -> dict:
    budget = spec.pod_disruption_budget
    assert budget is not None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(owner),
        # every pod, a LeaderWorkerSet's workers too: evicting any pod of a group stops the group
        "spec": {
            "selector": {"matchLabels": selector_labels(owner["metadata"]["name"])},
            "minAvailable": budget.get("minAvailable"),
            "maxUnavailable": budget.get("maxUnavailable"),
        },
    }


def cache_claim(owner: dict, spec: LLMDeploymentSpec) -> dict:
    cache = spec.model_cache
    assert cache is not None and cache.size is not None
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(owner, cache_claim_name(owner["metadata"]["name"], spec)),
        "spec": {
            "accessModes": [cache.access_mode],
            "resources": {"requests": {"storage": cache.size}},
            # absent, not None: the API server fills in the default class, which is no drift
            **({"storageClassName": cache.storage_class_name} if cache.storage_class_name else {}),
        },
    }


def workloads(
    owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig
) -> dict[str, dict | None]:
    """The pods' owner: a Deployment, or a LeaderWorkerSet when the ranks span nodes (the other
    kind None, so switching removes the old one)."""
    if not spec.multi_node:
        return {"Deployment": deployment(owner, spec, config), "LeaderWorkerSet": None}
    claim = cache_claim_name(owner["metadata"]["name"], spec)
    return {"Deployment": None, "LeaderWorkerSet": leader_worker_set(owner, spec, config, claim)}


def build_children(
    owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig
) -> dict[str, dict | None]:
    """kind -> the child as it should be, or None where the spec asks for none of that kind;
    pure, without owner references (`pagedserve operator render` prints these)."""
    return {  # in apply order: the claim before the pods that mount it
        "PersistentVolumeClaim": (
            cache_claim(owner, spec)
            if spec.model_cache and not spec.model_cache.existing_claim
            else None
        ),
        **workloads(owner, spec, config),
        "Service": service(owner, spec),
        **autoscalers(owner, spec, config),
        "PodDisruptionBudget": pod_disruption_budget(owner, spec)
        if spec.pod_disruption_budget
        else None,
        "InferencePool": inference_pool(owner, spec) if spec.inference_pool else None,
    }


def desired_children(
    owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig
) -> dict[str, dict | None]:
    """build_children, each controlled by the owner (kopf.adopt), as the operator applies them."""
    children = build_children(owner, spec, config)
    kopf.adopt(
        [child for child in children.values() if child is not None], owner=copy.deepcopy(owner)
    )
    return children


def event(
    owner: dict, kind: str, reason: str, message: str, now: datetime.datetime | None = None
) -> dict:
    """A core/v1 Event about the LLMDeployment (what `kubectl describe llmd` lists)."""
    meta = owner["metadata"]
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": owner.get("apiVersion", API_VERSION),
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "pagedserve-operator"},
        "reportingComponent": "pagedserve.io/operator",
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
