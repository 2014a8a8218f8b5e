"""Idempotence, restarts, deletion, and the operator's API calls against its RBAC list."""

import pytest

from pagedserve.operator import rbac
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.kube import Kube
from pagedserve.operator.reconcile import reconcile
from tests.kube_emulator import (
    OPERATOR_AGENTS,
    condition,
    llmdeployment,
    running_operator,
    wait_for,
)

WRITES = ("POST", "PATCH", "PUT", "DELETE")
FULL = dict(
    accelerator="amd",
    tensorParallelSize=4,
    replicas=2,
    modelCache={"size": "100Gi"},
    apiKeySecret={"name": "api", "key": "key"},
    autoscaling={"minReplicas": 2, "maxReplicas": 4},
    podDisruptionBudget={"maxUnavailable": 1},
    inferencePool={"enabled": True},
    resources={"requests": {"memory": "65536Mi"}},
    nodeSelector={"gpu": "mi300x"},
)


@pytest.fixture
def kubeconfig(cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    monkeypatch.setenv("PAGEDSERVE_RESYNC_INTERVAL", "1")
    return cluster.kubeconfig


def add_secret(cluster, ns, name="api"):
    cluster.kube.create(
        "Secret",
        ns,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "data": {"key": "c2VjcmV0"},
        },
    )


def writes_by_operator(cluster, since: int = 0) -> list[str]:
    return [
        f"{r.method} {r.url.path}"
        for r in cluster.requests()[since:]
        if r.method in WRITES and r.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS)
    ]


def test_reconciling_twice_changes_nothing(cluster, kubeconfig, ns):
    add_secret(cluster, ns)
    cluster.kube.create("LLMDeployment", ns, llmdeployment("twice", ns, **FULL))
    kube, config = Kube.from_environment(), OperatorConfig.from_env({})
    try:
        first = reconcile(kube, config, cluster.kube.get("LLMDeployment", ns, "twice"))
        assert {a.kind: a.action for a in first.actions} == {
            "PersistentVolumeClaim": "created",
            "Deployment": "created",
            "Service": "created",
            "HorizontalPodAutoscaler": "created",
            "PodDisruptionBudget": "created",
            "InferencePool": "created",
            "ScaledObject": "absent",
            "LeaderWorkerSet": "absent",
        }
        mark = len(cluster.requests())
        second = reconcile(kube, config, cluster.kube.get("LLMDeployment", ns, "twice"))
    finally:
        kube.close()
    # every child unchanged; the one kind the spec does not ask for (KEDA's, beside the HPA) absent
    assert {a.kind: a.action for a in second.actions} == {
        kind: "absent" if kind in ("ScaledObject", "LeaderWorkerSet") else "unchanged"
        for kind in (a.kind for a in first.actions)
    }
    assert writes_by_operator(cluster, mark) == []
    assert second.status == first.status


@pytest.mark.parametrize(
    "spec",
    [
        None,
        "serve it",
        {"model": "m", "service": []},
        {"model": "m", "env": "A=1"},
        {"model": 7},
        {"model": "m", "replicas": "two", "service": {"port": "http"}},
    ],
)
def test_garbage_specs_get_a_condition_not_a_crash(cluster, kubeconfig, ns, spec):
    body = llmdeployment("junk", ns)
    body["spec"] = spec
    cluster.kube.create("LLMDeployment", ns, body)
    kube = Kube.from_environment()
    try:
        outcome = reconcile(
            kube, OperatorConfig.from_env({}), cluster.kube.get("LLMDeployment", ns, "junk")
        )
    finally:
        kube.close()
    assert outcome.problem[0] == "InvalidSpec" and outcome.permanent
    ready = condition(cluster.kube.get("LLMDeployment", ns, "junk"), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert cluster.objects("Deployment", ns) == []


def test_restarted_operator_duplicates_nothing(cluster, kubeconfig, ns):
    with running_operator(cluster, namespaces=(ns,)):
        for name in ("one", "two"):
            cluster.kube.create(
                "LLMDeployment", ns, llmdeployment(name, ns, autoscaling={"maxReplicas": 2})
            )
        for name in ("one", "two"):
            wait_for(
                lambda name=name: condition(
                    cluster.kube.get("LLMDeployment", ns, name), "Reconciled"
                ),
                what=name,
            )
            wait_for(
                lambda name=name: cluster.kube.get("HorizontalPodAutoscaler", ns, name),
                what=f"{name}'s HPA",
            )
    before = {
        kind: len(cluster.objects(kind, ns))
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "Event")
    }
    mark = len(cluster.requests())
    with running_operator(cluster, namespaces=(ns,)):
        # resume handlers look at both (the resync too, every second): wait until each was
        # checked twice
        checked = lambda name: sum(
            1
            for r in cluster.requests()[mark:]
            if r.method == "GET" and r.url.path.endswith(f"/namespaces/{ns}/deployments/{name}")
        )
        wait_for(
            lambda: checked("one") >= 2 and checked("two") >= 2,
            what="the restarted operator's passes",
        )
    assert [w for w in writes_by_operator(cluster, mark) if "/llmdeployments/" not in w] == []
    assert {kind: len(cluster.objects(kind, ns)) for kind in before} == before


def test_deleted_llmdeployment_is_gone_at_once_and_not_resurrected(cluster, kubeconfig, ns):
    resyncs_of = lambda name, since: sum(
        1
        for r in cluster.requests()[since:]
        if r.method == "GET" and r.url.path.endswith(f"/namespaces/{ns}/llmdeployments/{name}")
    )
    with running_operator(cluster, namespaces=(ns,)):
        for name in ("gone", "other"):  # "other" shows when the resync has gone round
            cluster.kube.create("LLMDeployment", ns, llmdeployment(name, ns))
        dep = wait_for(lambda: cluster.kube.get("Deployment", ns, "gone"), what="the Deployment")
        wait_for(
            lambda: condition(cluster.kube.get("LLMDeployment", ns, "gone"), "Reconciled"),
            what="status",
        )
        cluster.kube.delete("LLMDeployment", ns, "gone")
        assert cluster.kube.get("LLMDeployment", ns, "gone") is None  # no finalizer to wait for
        mark = len(cluster.requests())
        wait_for(lambda: resyncs_of("other", mark) >= 2, what="two resync rounds")
        # a real cluster's garbage collector follows the owner reference; do its work here
        assert dep["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
        mark = len(cluster.requests())
        cluster.kube.delete("Deployment", ns, "gone")
        cluster.kube.delete("Service", ns, "gone")
        wait_for(lambda: resyncs_of("other", mark) >= 2, what="two more resync rounds")
    assert [d["metadata"]["name"] for d in cluster.objects("Deployment", ns)] == ["other"]
    assert [s["metadata"]["name"] for s in cluster.objects("Service", ns)] == ["other"]
    # nothing written but (maybe) kopf's last word on the deleted resource itself
    assert [w for w in writes_by_operator(cluster, mark) if "/llmdeployments/" not in w] == []


def test_api_conflicts_and_server_errors_are_retried(cluster, kubeconfig, monkeypatch, ns):
    monkeypatch.setenv(
        "PAGEDSERVE_RESYNC_INTERVAL", "600"
    )  # only the handler's own retries count here
    cluster.fail_next("POST", f"/namespaces/{ns}/deployments", 503, times=2)
    cluster.fail_next("PATCH", f"/namespaces/{ns}/llmdeployments/flaky/status", 409)
    with running_operator(cluster, namespaces=(ns,)) as runner:
        cluster.kube.create("LLMDeployment", ns, llmdeployment("flaky", ns))
        wait_for(
            lambda: cluster.kube.get("Deployment", ns, "flaky"),
            timeout=30,
            what="the Deployment after retries",
        )
        owner = wait_for(
            lambda: (
                condition(cluster.kube.get("LLMDeployment", ns, "flaky"), "Reconciled")
                and cluster.kube.get("LLMDeployment", ns, "flaky")
            ),
            timeout=30,
            what="the status",
        )
    assert condition(owner, "Reconciled")["status"] == "True"
    posts = [
        r
        for r in cluster.requests()
        if r.method == "POST" and r.url.path.endswith(f"/namespaces/{ns}/deployments")
    ]
    assert len(posts) == 3 and len(cluster.objects("Deployment", ns)) == 1
    assert "retrying" in runner.output


def test_operator_calls_only_what_its_rbac_list_allows(cluster, kubeconfig, ns):
    add_secret(cluster, ns)
    mark = len(cluster.requests())
    with running_operator(cluster, namespaces=(ns,)):
        cluster.kube.create("LLMDeployment", ns, llmdeployment("rbac", ns, **FULL))
        cluster.kube.create(
            "LLMDeployment",
            ns,
            llmdeployment("nosecret", ns, hfTokenSecret={"name": "x", "key": "y"}),
        )
        wait_for(lambda: cluster.kube.get("PodDisruptionBudget", ns, "rbac"), what="the PDB")
        wait_for(
            lambda: condition(cluster.kube.get("LLMDeployment", ns, "nosecret"), "Ready"),
            what="a condition",
        )
        cluster.kube.patch(
            "LLMDeployment",
            ns,
            "rbac",
            {
                "spec": {
                    "autoscaling": None,
                    "podDisruptionBudget": None,
                    "modelCache": None,
                    "replicas": 3,
                }
            },
        )
        wait_for(
            lambda: cluster.kube.get("PersistentVolumeClaim", ns, "rbac-model-cache") is None,
            what="deletes",
        )
    calls = cluster.api_calls(since=mark)
    not_allowed = [c for c in calls if not rbac.allows(c.group, c.resource, c.verb)]
    assert not_allowed == []
    # and the run exercised the list: every verb on the children, the status, an Event
    for call in [
        ("apps", "deployments", "create"),
        ("", "services", "get"),
        ("", "secrets", "get"),
        ("autoscaling", "horizontalpodautoscalers", "delete"),
        ("policy", "poddisruptionbudgets", "delete"),
        ("", "persistentvolumeclaims", "delete"),
        ("pagedserve.io", "llmdeployments/status", "patch"),
        ("pagedserve.io", "llmdeployments", "watch"),
        ("", "events", "create"),
    ]:
        assert call in calls
