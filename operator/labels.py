"""Names, labels and metadata every child of an LLMDeployment shares: what builders of any kind
(Deployment, InferencePool, ScaledObject, later a LeaderWorkerSet) stamp on what they build."""

GROUP, VERSION, KIND, PLURAL = "pagedserve.io", "v1alpha1", "LLMDeployment", "llmdeployments"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = "pagedserve"
COMPONENT = "server"
# The Endpoint Picker reads a pod's engine type from this label (and, until llm-d drops it, the
# older GIE key) to pick the metric names it scrapes; the server exports vLLM's names.
ENGINE_TYPE_LABELS = ("llm-d.ai/engine-type", "inference.networking.k8s.io/engine-type")
ENGINE_TYPE = "vllm"


def selector_labels(name: str) -> dict:
    """The Deployment's selector: it never changes (the API server would refuse that)."""
    return {
        "app.kubernetes.io/name": "pagedserve",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": COMPONENT,
    }


def labels(name: str) -> dict:
    return {**selector_labels(name), "app.kubernetes.io/managed-by": MANAGED_BY}


def pod_labels(name: str) -> dict:
    """The serving pods' labels: the children's, and the engine type the Endpoint Picker reads."""
    return {**labels(name), **{key: ENGINE_TYPE for key in ENGINE_TYPE_LABELS}}


def selector_string(name: str, extra: dict | None = None) -> str:
    """status.selector, which the scale subresource hands to an HPA to find the pods (extra:
    a multi-node spec's leader label, as only leaders export metrics)."""
    return ",".join(
        f"{k}={v}" for k, v in sorted({**selector_labels(name), **(extra or {})}.items())
    )


def child_name(kind: str, name: str) -> str:
    """The name of an LLMDeployment's child of that kind (the operator's own cache PVC's name)."""
    return f"{name}-model-cache" if kind == "PersistentVolumeClaim" else name


def meta(owner: dict, name: str | None = None) -> dict:
    """A child's metadata: named after the owner (or name), in its namespace, with our labels."""
    return {
        "name": name or owner["metadata"]["name"],
        "namespace": owner["metadata"]["namespace"],
        "labels": labels(owner["metadata"]["name"]),
    }
