"""Autoscalers of an LLMDeployment: an HPA, or a KEDA ScaledObject. Both scale the LLMDeployment
through its scale subresource, so spec.replicas stays the one truth and the operator, which
copies it into the Deployment, never fights the scaler."""

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.labels import API_VERSION, KIND, meta
from pagedserve.operator.spec import LLMDeploymentSpec

KEDA_API_VERSION = "keda.sh/v1alpha1"
# the server's gauge of requests waiting in its queue (one series per pod)
WAITING_METRIC = "pagedserve:num_requests_waiting"


def _target(owner: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": owner["metadata"]["name"]}


def horizontal_pod_autoscaler(owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig) -> dict:
    """Averages a Pods metric that Prometheus Adapter serves under config.hpa_metric."""
    scaling = spec.autoscaling
    assert scaling is not None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(owner),
        "spec": {
            "scaleTargetRef": _target(owner),
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": config.hpa_metric},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": str(scaling.target_requests_waiting),
                        },
                    },
                }
            ],
        },
    }


def waiting_query(name: str, namespace: str) -> str:
    """PromQL for the requests waiting on this LLMDeployment's pods, summed.

    Deployment pods are named <deployment>-<hash>-<hash>, and PromQL regexes match whole
    values, so another LLMDeployment whose name merely starts with this one is not counted.
    namespace and pod are the target labels the Prometheus Operator and annotation scraping set.
    """
    return f'sum({WAITING_METRIC}{{namespace="{namespace}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"}})'


def scaled_object(owner: dict, spec: LLMDeploymentSpec) -> dict:
    """KEDA's ScaledObject; AverageValue divides the sum by the replicas, as an HPA Pods metric."""
    scaling = spec.autoscaling
    assert scaling is not None and scaling.prometheus_address is not None
    name, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": meta(owner),
        "spec": {
            "scaleTargetRef": _target(owner),
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": scaling.max_replicas,
            "triggers": [
                {
                    "type": "prometheus",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": scaling.prometheus_address,
                        "query": scaling.query or waiting_query(name, namespace),
                        # the CRD wants strings in trigger metadata
                        "threshold": str(scaling.target_requests_waiting),
                    },
                }
            ],
        },
    }


def autoscalers(
    owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig
) -> dict[str, dict | None]:
    """kind -> the autoscaler the spec asks for, None for the other (KEDA makes its own HPA)."""
    engine = spec.autoscaling.engine if spec.autoscaling else None
    return {
        "HorizontalPodAutoscaler": horizontal_pod_autoscaler(owner, spec, config)
        if engine == "hpa"
        else None,
        "ScaledObject": scaled_object(owner, spec) if engine == "keda" else None,
    }
