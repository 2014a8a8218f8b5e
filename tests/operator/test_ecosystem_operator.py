"""The running operator (kopf, against the emulated API server) creates, updates and deletes an
LLMDeployment's InferencePool and KEDA ScaledObject; a cluster without their CRDs gets a
condition and an Event, not a crash loop."""

import pathlib

import pytest

from pagedserve.operator import rbac
from tests.kube_emulator import (
    OPERATOR_AGENTS,
    EmulatedCluster,
    condition,
    llmdeployment,
    running_operator,
    wait_for,
)

CRD_PATH = (
    pathlib.Path(__file__).resolve().parents[2]
    / "charts"
    / "pagedserve"
    / "crds"
    / "llmdeployments.yaml"
)

KEDA = {
    "engine": "keda",
    "prometheusAddress": "http://prometheus.monitoring:9090",
    "maxReplicas": 4,
}


def controlled_by(obj: dict, owner: dict) -> bool:
    return any(
        ref["uid"] == owner["metadata"]["uid"]
        and ref.get("controller")
        and ref.get("blockOwnerDeletion")
        for ref in obj["metadata"].get("ownerReferences") or []
    )


@pytest.mark.usefixtures("operator")
def test_pool_and_scaled_object_follow_the_spec(cluster, ns):
    kube, mark = cluster.kube, len(cluster.requests())
    kube.create(
        "LLMDeployment",
        ns,
        llmdeployment("chat", ns, inferencePool={"enabled": True}, autoscaling=KEDA),
    )
    pool = wait_for(lambda: kube.get("InferencePool", ns, "chat"), what="the InferencePool")
    scaled = wait_for(lambda: kube.get("ScaledObject", ns, "chat"), what="the ScaledObject")
    owner = kube.get("LLMDeployment", ns, "chat")
    assert controlled_by(pool, owner) and controlled_by(
        scaled, owner
    )  # the garbage collector's cue
    assert pool["spec"]["endpointPickerRef"]["name"] == "chat-epp"
    assert kube.get("HorizontalPodAutoscaler", ns, "chat") is None
    # updates: a new EPP, a new port, a new target
    kube.patch(
        "LLMDeployment",
        ns,
        "chat",
        {
            "spec": {
                "service": {"port": 8080},
                "inferencePool": {"endpointPickerRef": {"name": "router"}},
                "autoscaling": {"targetRequestsWaiting": 2},
            }
        },
    )
    wait_for(
        lambda: (
            kube.get("InferencePool", ns, "chat")["spec"]["endpointPickerRef"]["name"] == "router"
        ),
        what="the pool's new picker",
    )
    pool = kube.get("InferencePool", ns, "chat")
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    wait_for(
        lambda: (
            kube.get("ScaledObject", ns, "chat")["spec"]["triggers"][0]["metadata"]["threshold"]
            == "2"
        ),
        what="the ScaledObject's new threshold",
    )
    # deletes: the pool when disabled; KEDA's object when the engine goes back to an HPA
    kube.patch(
        "LLMDeployment",
        ns,
        "chat",
        {
            "spec": {
                "inferencePool": {"enabled": False},
                "autoscaling": {"engine": "hpa", "prometheusAddress": None},
            }
        },
    )
    wait_for(lambda: kube.get("InferencePool", ns, "chat") is None, what="the pool deleted")
    wait_for(lambda: kube.get("ScaledObject", ns, "chat") is None, what="the ScaledObject deleted")
    wait_for(lambda: kube.get("HorizontalPodAutoscaler", ns, "chat"), what="an HPA instead")
    assert condition(kube.get("LLMDeployment", ns, "chat"), "Reconciled")["status"] == "True"
    calls = cluster.api_calls(OPERATOR_AGENTS, since=mark)
    for resource in ("inferencepools", "scaledobjects"):
        used = {c.verb for c in calls if c.resource == resource}
        assert used == {"get", "create", "patch", "delete"}, (resource, used)
    assert all(rbac.allows(*call) for call in calls), sorted(
        c for c in calls if not rbac.allows(*c)
    )


def reconciled(cluster, name: str) -> dict:
    return condition(cluster.kube.get("LLMDeployment", "default", name), "Reconciled")


def events(cluster, name: str, reason: str) -> list[dict]:
    return [
        e
        for e in cluster.objects("Event", "default")
        if e["involvedObject"]["name"] == name and e["reason"] == reason
    ]


@pytest.mark.timeout(120)
def test_cluster_without_the_crds_gets_a_condition_and_an_event(monkeypatch):
    asks = {"chat": dict(inferencePool={"enabled": True}), "scaled": dict(autoscaling=KEDA)}
    providers = {"chat": "Gateway API Inference Extension", "scaled": "KEDA"}
    with EmulatedCluster(crds=[CRD_PATH]) as bare:
        monkeypatch.setenv("KUBECONFIG", bare.kubeconfig)
        monkeypatch.setenv("PAGEDSERVE_RETRY_DELAY", "600")
        with running_operator(bare) as runner:
            for name, spec in asks.items():
                bare.kube.create("LLMDeployment", "default", llmdeployment(name, **spec))
            for name, provider in providers.items():
                wait_for(
                    lambda n=name: reconciled(bare, n).get("reason") == "CRDNotInstalled",
                    what=f"{name}: Reconciled=False, CRDNotInstalled",
                )
                assert reconciled(bare, name)["status"] == "False"
                assert provider in reconciled(bare, name)["message"]
                # the pods it can make are made and serve meanwhile
                assert bare.kube.get("Deployment", "default", name) is not None
                wait_for(
                    lambda n=name: events(bare, n, "CRDNotInstalled"), what=f"{name}: an Event"
                )
            # a spec that stops asking for the missing kind recovers without a restart
            off = {"spec": {"inferencePool": {"enabled": False}}}
            bare.kube.patch("LLMDeployment", "default", "chat", off)
            wait_for(
                lambda: reconciled(bare, "chat").get("status") == "True",
                what="chat reconciled once the pool is off",
            )
    assert runner.exception is None
    assert "Traceback" not in runner.output and "unrecoverable error" not in runner.output
