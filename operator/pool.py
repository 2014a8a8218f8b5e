"""The Gateway API Inference Extension's InferencePool for an LLMDeployment: the pods a Gateway
routes to through an Endpoint Picker (EPP), which reads their metrics to choose one."""

from pagedserve.operator.labels import meta
from pagedserve.operator.lws import serving_selector
from pagedserve.operator.spec import LLMDeploymentSpec

POOL_API_VERSION = "inference.networking.k8s.io/v1"


def epp_service_name(name: str) -> str:
    """The EPP Service the upstream charts make for a release named after the pool."""
    return f"{name}-epp"


def inference_pool(owner: dict, spec: LLMDeploymentSpec) -> dict:
    """Selects exactly this LLMDeployment's serving pods, on the port they serve.

    endpointPickerRef is always given: GIE up to v1.5 requires it, and an absent failureMode
    would default to FailClose, which turns an EPP restart into failed requests.
    """
    pool = spec.inference_pool
    assert pool is not None
    name, picker = owner["metadata"]["name"], pool.endpoint_picker
    return {
        "apiVersion": POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": meta(owner),
        "spec": {
            # the pods that serve: a multi-node group's workers are headless
            "selector": {"matchLabels": serving_selector(name, spec.multi_node)},
            # the container listens on the Service's port (pod.container)
            "targetPorts": [{"number": spec.service_port}],
            "endpointPickerRef": {
                "name": picker.name or epp_service_name(name),
                "port": {"number": picker.port},
                "failureMode": picker.failure_mode,
            },
        },
    }
