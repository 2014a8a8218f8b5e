"""The spec blocks that hand work to other Kubernetes projects: `autoscaling` (an HPA, or KEDA)
and `inferencePool` (the Gateway API Inference Extension's pool, routed by an Endpoint Picker).

The CRD's schema and CEL rules say the same; these checks hold where the schema is missing.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from pagedserve.operator.fields import SpecError, choice, get, integer, only

SCALING_ENGINES = ("hpa", "keda")
FAILURE_MODES = ("FailOpen", "FailClose")
# the Service port of the upstream EPP charts (llm-d-router, GIE's inferencepool chart)
EPP_PORT = 9002


@dataclass(slots=True)
class AutoscalingSpec:
    min_replicas: int = 1
    max_replicas: int = 1
    target_requests_waiting: int = 5
    engine: str = "hpa"
    prometheus_address: str | None = None  # KEDA's Prometheus; an HPA reads Prometheus Adapter
    query: str | None = None  # KEDA: PromQL replacing the default waiting-requests sum


@dataclass(slots=True)
class EndpointPickerRef:
    name: str | None = None  # None: "<llmdeployment>-epp", as the upstream EPP charts name it
    port: int = EPP_PORT
    failure_mode: str = "FailOpen"


@dataclass(slots=True)
class InferencePoolSpec:
    endpoint_picker: EndpointPickerRef


def _keda_fields(obj: Mapping, w: str, engine: str, lo: int) -> tuple[str | None, str | None]:
    address, query = get(obj, "prometheusAddress", w, str), get(obj, "query", w, str)
    if engine != "keda":
        given = [key for key in ("prometheusAddress", "query") if obj.get(key) is not None]
        if given:
            raise SpecError(
                f"{w}.{given[0]} is for engine: keda (an HPA reads its metric through "
                "Prometheus Adapter)"
            )
        if lo == 0:
            raise SpecError(f"{w}.minReplicas 0 needs engine: keda (an HPA cannot scale to zero)")
        return None, None
    if not address or not address.startswith(("http://", "https://")):
        raise SpecError(
            f"{w}.prometheusAddress is required with engine: keda: the Prometheus URL "
            f"KEDA queries, e.g. http://prometheus.monitoring:9090, got {address!r}"
        )
    if lo == 0 and not (query and query.strip()):
        raise SpecError(
            f"{w}.query is required with minReplicas 0: while no pod runs there is no "
            "pod metric to wake them; count the requests held outside the pods (the "
            "Endpoint Picker's flow-control queue)"
        )
    return address, query


def parse_autoscaling(obj: Mapping) -> AutoscalingSpec:
    w = "spec.autoscaling"
    only(
        obj,
        (
            "minReplicas",
            "maxReplicas",
            "targetRequestsWaiting",
            "engine",
            "prometheusAddress",
            "query",
        ),
        w,
    )
    engine = choice(obj, "engine", w, SCALING_ENGINES, "hpa")
    lo = integer(obj, "minReplicas", w, 1, minimum=0)
    hi = integer(obj, "maxReplicas", w, None, minimum=1)
    if hi is None:
        raise SpecError(f"{w}.maxReplicas is required")
    if hi < lo:
        raise SpecError(f"{w}.maxReplicas ({hi}) must be >= minReplicas ({lo})")
    address, query = _keda_fields(obj, w, engine, lo)
    return AutoscalingSpec(
        lo, hi, integer(obj, "targetRequestsWaiting", w, 5, minimum=1), engine, address, query
    )


def _endpoint_picker(obj: Mapping) -> EndpointPickerRef:
    w = "spec.inferencePool.endpointPickerRef"
    only(obj, ("name", "port", "failureMode"), w)
    name = get(obj, "name", w, str)
    if name is not None and not name:
        raise SpecError(f"{w}.name must not be empty (leave it out for <name>-epp)")
    port = get(obj, "port", w, dict, {})
    only(port, ("number",), f"{w}.port")
    number = integer(port, "number", f"{w}.port", EPP_PORT, minimum=1)
    if number > 65535:
        raise SpecError(f"{w}.port.number must be <= 65535, got {number}")
    return EndpointPickerRef(name, number, choice(obj, "failureMode", w, FAILURE_MODES, "FailOpen"))


def parse_inference_pool(obj: Mapping) -> InferencePoolSpec | None:
    """The pool to render, or None when `enabled` is false (the default)."""
    w = "spec.inferencePool"
    only(obj, ("enabled", "endpointPickerRef"), w)
    picker = _endpoint_picker(get(obj, "endpointPickerRef", w, dict, {}))
    return InferencePoolSpec(picker) if get(obj, "enabled", w, bool, False) else None
