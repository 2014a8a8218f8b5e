"""InferencePool and KEDA ScaledObject as the operator renders them, checked against the real
CRDs (GIE v1.6.0 and v1.5.0, KEDA v2.20.2: schema, defaults, CEL rules) and Kubernetes 1.37."""

import re

import kubernetes_validate
import pytest

from pagedserve.operator import rbac
from pagedserve.operator.apply import strip_none
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.labels import ENGINE_TYPE_LABELS
from pagedserve.operator.manifests import desired_children
from pagedserve.operator.spec import SpecError, parse_spec
from tests.crds.validate import KEDA_CRD, POOL_CRDS, Invalid, load, validate
from tests.kube_emulator import llmdeployment

PROMETHEUS = "http://prometheus.monitoring:9090"
SHAPES = {  # spec shapes a user writes
    "pool, defaults": dict(inferencePool={"enabled": True}),
    "pool, own EPP": dict(
        inferencePool={
            "enabled": True,
            "endpointPickerRef": {
                "name": "router",
                "port": {"number": 9100},
                "failureMode": "FailClose",
            },
        },
        service={"port": 8080},
    ),
    "keda": dict(
        autoscaling={
            "engine": "keda",
            "prometheusAddress": PROMETHEUS,
            "maxReplicas": 4,
            "targetRequestsWaiting": 3,
        }
    ),
    "keda to zero, with pool": dict(
        inferencePool={"enabled": True},
        accelerator="amd",
        tensorParallelSize=2,
        autoscaling={
            "engine": "keda",
            "prometheusAddress": PROMETHEUS,
            "minReplicas": 0,
            "maxReplicas": 2,
            "query": 'sum(llm_d_epp_flow_control_queue_size{inference_pool="chat"})',
        },
    ),
    "hpa": dict(autoscaling={"maxReplicas": 3}),
}
CONFIG = OperatorConfig(image_cpu="registry.test/ps:cpu", image_amd="registry.test/ps:rocm")


@pytest.fixture(scope="module")
def crds() -> dict:
    return {"pool " + gen: load(path) for gen, path in POOL_CRDS.items()} | {"keda": load(KEDA_CRD)}


def render(name: str = "chat", ns: str = "team-a", **spec) -> dict[str, dict]:
    owner = llmdeployment(name, ns, **spec)
    owner["metadata"]["uid"] = f"uid-{name}"
    children = desired_children(owner, parse_spec(owner["spec"]), CONFIG)
    return {kind: strip_none(child) for kind, child in children.items() if child is not None}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_child_is_valid_against_its_crd_or_kubernetes_1_37(shape, crds):
    children = render(**SHAPES[shape])
    for kind, child in children.items():
        if kind == "InferencePool":
            for generation in POOL_CRDS:
                validate(child, crds["pool " + generation])
        elif kind == "ScaledObject":
            validate(child, crds["keda"])
        else:
            kubernetes_validate.validate(child, "1.37", strict=True)
    wants_pool = "inferencePool" in SHAPES[shape]
    assert ("InferencePool" in children) == wants_pool


def test_pool_selects_exactly_this_deployments_pods_on_their_port():
    chat, other = render(**SHAPES["pool, own EPP"]), render("chat-2", **SHAPES["pool, own EPP"])
    pool = chat["InferencePool"]["spec"]
    selector = pool["selector"]["matchLabels"]
    for kind, own in (("chat", chat), ("chat-2", other)):
        pod_labels = own["Deployment"]["spec"]["template"]["metadata"]["labels"]
        assert (selector.items() <= pod_labels.items()) == (kind == "chat")
    (container,) = chat["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert (
        pool["targetPorts"]
        == [{"number": p["containerPort"]} for p in container["ports"]]
        == [{"number": 8080}]
    )
    assert pool["endpointPickerRef"] == {
        "name": "router",
        "port": {"number": 9100},
        "failureMode": "FailClose",
    }
    assert chat["InferencePool"]["metadata"]["namespace"] == "team-a"
    (ref,) = chat["InferencePool"]["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "LLMDeployment",
        "chat",
        "uid-chat",
        True,
    )


def test_pool_without_a_picker_gets_the_upstream_chart_names_and_fails_open(crds):
    pool = render(**SHAPES["pool, defaults"])["InferencePool"]
    assert pool["spec"]["endpointPickerRef"] == {
        "name": "chat-epp",
        "port": {"number": 9002},
        "failureMode": "FailOpen",
    }
    # why it is always given: a GIE <= v1.5 cluster refuses a pool without one
    bare = {**pool, "spec": {k: v for k, v in pool["spec"].items() if k != "endpointPickerRef"}}
    validate(bare, crds["pool v1.6.0"])
    with pytest.raises(Invalid, match="endpointPickerRef"):
        validate(bare, crds["pool v1.5.0"])


def test_pods_carry_the_engine_type_the_endpoint_picker_reads():
    labels = render()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert {key: labels[key] for key in ENGINE_TYPE_LABELS} == {
        key: "vllm" for key in ENGINE_TYPE_LABELS
    }
    # not in the Deployment's selector, which the API server never lets change
    selector = render()["Deployment"]["spec"]["selector"]["matchLabels"]
    assert not set(ENGINE_TYPE_LABELS) & set(selector)


def test_keda_scales_the_llmdeployment_with_no_hpa_beside_it():
    children = render(**SHAPES["keda"])
    assert "HorizontalPodAutoscaler" not in children
    spec = children["ScaledObject"]["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "pagedserve.io/v1alpha1",
        "kind": "LLMDeployment",
        "name": "chat",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    (trigger,) = spec["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    assert (
        trigger["metadata"]["threshold"] == "3"
        and trigger["metadata"]["serverAddress"] == PROMETHEUS
    )
    assert "ScaledObject" not in render(**SHAPES["hpa"]) and "HorizontalPodAutoscaler" in render(
        **SHAPES["hpa"]
    )


def test_keda_query_counts_only_this_resources_pods_in_its_namespace():
    query = render(**SHAPES["keda"])["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    assert query.startswith("sum(pagedserve:num_requests_waiting{")
    assert 'namespace="team-a"' in query
    pods = re.search(r'pod=~"([^"]+)"', query).group(1)
    # PromQL anchors regexes at both ends, as fullmatch does
    assert re.fullmatch(pods, "chat-7d9f8c6b5-x2k4p")
    for other in ("chat-2-7d9f8c6b5-x2k4p", "chatbot-7d9f8c6b5-x2k4p", "chat"):
        assert not re.fullmatch(pods, other), other
    given = render(**SHAPES["keda to zero, with pool"])["ScaledObject"]["spec"]
    assert (
        given["triggers"][0]["metadata"]["query"]
        == SHAPES["keda to zero, with pool"]["autoscaling"]["query"]
    )
    assert given["minReplicaCount"] == 0


@pytest.mark.parametrize(
    "autoscaling, field",
    [
        ({"maxReplicas": 2, "minReplicas": 0}, "spec.autoscaling.minReplicas 0 needs engine: keda"),
        (
            {"maxReplicas": 2, "prometheusAddress": PROMETHEUS},
            "spec.autoscaling.prometheusAddress is for engine: keda",
        ),
        ({"maxReplicas": 2, "engine": "keda"}, "spec.autoscaling.prometheusAddress is required"),
        (
            {"maxReplicas": 2, "engine": "keda", "prometheusAddress": "prometheus:9090"},
            "spec.autoscaling.prometheusAddress",
        ),
        (
            {"maxReplicas": 2, "engine": "keda", "prometheusAddress": PROMETHEUS, "minReplicas": 0},
            "spec.autoscaling.query is required with minReplicas 0",
        ),
        ({"maxReplicas": 2, "engine": "kpa"}, "spec.autoscaling.engine must be one of hpa, keda"),
    ],
)
def test_operator_refuses_what_the_crd_refuses(autoscaling, field, crd):
    with pytest.raises(SpecError, match=re.escape(field)):
        parse_spec({"model": "m", "autoscaling": autoscaling})
    with pytest.raises(Invalid):
        validate(llmdeployment("chat", autoscaling=autoscaling), crd)


@pytest.mark.parametrize(
    "pool, field",
    [
        ({"enabled": "yes"}, "spec.inferencePool.enabled must be true or false"),
        (
            {"enabled": True, "endpointPickerRef": {"name": ""}},
            "spec.inferencePool.endpointPickerRef.name",
        ),
        (
            {"enabled": True, "endpointPickerRef": {"port": 9002}},
            "spec.inferencePool.endpointPickerRef.port must be an object",
        ),
        (
            {"enabled": True, "endpointPickerRef": {"failureMode": "Open"}},
            "spec.inferencePool.endpointPickerRef.failureMode",
        ),
        ({"enabled": True, "selector": {}}, "spec.inferencePool: unknown field(s) selector"),
    ],
)
def test_bad_pool_fields_are_named(pool, field, crd):
    with pytest.raises(SpecError, match=re.escape(field)):
        parse_spec({"model": "m", "inferencePool": pool})
    with pytest.raises(Invalid):
        validate(llmdeployment("chat", inferencePool=pool), crd)


def test_crd_defaults_equal_the_operators(crd):
    # what the operator reads from a spec as written equals what it reads once the API server
    # has filled in the CRD's defaults
    written = llmdeployment(
        "chat",
        inferencePool={"enabled": True, "endpointPickerRef": {"port": {}}},
        autoscaling={"maxReplicas": 2},
    )
    stored = validate(written, crd)
    assert stored["spec"]["inferencePool"]["endpointPickerRef"] == {
        "port": {"number": 9002},
        "failureMode": "FailOpen",
    }
    assert stored["spec"]["autoscaling"]["engine"] == "hpa"
    assert parse_spec(stored["spec"]) == parse_spec(written["spec"])
    assert parse_spec({"model": "m", "inferencePool": {"enabled": False}}).inference_pool is None
    for shape in SHAPES.values():  # every shape the tests render is one the API server accepts
        validate(llmdeployment("chat", **shape), crd)


def test_rbac_grants_exactly_the_verbs_used_on_the_new_kinds():
    for group, resource in (
        ("inference.networking.k8s.io", "inferencepools"),
        ("keda.sh", "scaledobjects"),
    ):
        (rule,) = [r for r in rbac.NAMESPACED if (r.group, r.resource) == (group, resource)]
        assert set(rule.verbs) == {
            "get",
            "create",
            "patch",
            "delete",
        }  # apply.ensure and apply.remove
