"""The real operator (kopf, standalone, all namespaces) against the emulated API server.

The emulator runs no controllers: where a test needs pods to become ready it patches the
Deployment's status the way the Deployment controller would.
"""

import pytest

from tests.kube_emulator import condition, deployment_ready, llmdeployment, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def child(cluster, kind, ns, name):
    return cluster.kube.get(kind, ns, name)


def status_of(cluster, ns, name) -> dict:
    return (child(cluster, "LLMDeployment", ns, name) or {}).get("status") or {}


def events(cluster, ns, name):
    return [e for e in cluster.objects("Event", ns) if e["involvedObject"]["name"] == name]


def pods_ready(cluster, ns, name, ready):
    """What the Deployment controller reports once `ready` pods pass their readiness probe."""
    deployment_ready(cluster.kube, ns, name, ready)


def args_of(deployment) -> list[str]:
    return deployment["spec"]["template"]["spec"]["containers"][0].get("args", [])


def flag(args, name):
    return args[args.index(name) + 1]


def test_create_builds_deployment_and_service_and_fills_status(cluster, ns):
    cluster.kube.create(
        "LLMDeployment",
        ns,
        llmdeployment(
            "llama",
            ns,
            model="meta-llama/Meta-Llama-3-70B-Instruct",
            accelerator="amd",
            tensorParallelSize=4,
        ),
    )
    dep = wait_for(lambda: child(cluster, "Deployment", ns, "llama"), what="the Deployment")
    svc = wait_for(lambda: child(cluster, "Service", ns, "llama"), what="the Service")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"amd.com/gpu": "4"}
    assert container["args"][:2] == ["serve", "meta-llama/Meta-Llama-3-70B-Instruct"]
    assert (
        flag(container["args"], "--tensor-parallel-size"),
        flag(container["args"], "--distributed-executor-backend"),
    ) == ("4", "mp")
    assert svc["spec"]["ports"][0]["name"] == "http" and svc["spec"]["ports"][0]["port"] == 8000
    wait_for(lambda: status_of(cluster, ns, "llama"), what="a status")
    owner = child(cluster, "LLMDeployment", ns, "llama")
    status = owner["status"]
    assert status["endpoint"] == f"http://llama.{ns}.svc.cluster.local:8000/v1"
    assert (status["phase"], status["readyReplicas"], status["observedGeneration"]) == (
        "Pending",
        0,
        1,
    )
    assert condition(owner, "Reconciled")["status"] == "True"
    assert condition(owner, "Ready")["status"] == "False"
    for obj in (
        dep,
        svc,
    ):  # kmock collects no garbage: the references are what a real cluster needs
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (
            owner["metadata"]["uid"],
            True,
            True,
        )
    assert not owner["metadata"].get("finalizers")  # deleting it never waits for the operator


def test_status_follows_the_pods(cluster, ns):
    cluster.kube.create("LLMDeployment", ns, llmdeployment("tiny", ns, replicas=2))
    wait_for(lambda: child(cluster, "Deployment", ns, "tiny"), what="the Deployment")
    pods_ready(cluster, ns, "tiny", 1)
    st = wait_for(
        lambda: (st := status_of(cluster, ns, "tiny")).get("readyReplicas") == 1 and st,
        what="readyReplicas 1",
    )
    assert st["phase"] == "Progressing" and st["ready"] == "1/2"
    pods_ready(cluster, ns, "tiny", 2)
    wait_for(lambda: status_of(cluster, ns, "tiny").get("phase") == "Ready", what="phase Ready")
    owner = child(cluster, "LLMDeployment", ns, "tiny")
    assert condition(owner, "Ready")["status"] == "True" and owner["status"]["ready"] == "2/2"
    assert ("Normal", "AllReplicasReady") in {
        (e["type"], e["reason"]) for e in events(cluster, ns, "tiny")
    }


def test_spec_change_patches_the_deployment(cluster, ns):
    cluster.kube.create(
        "LLMDeployment", ns, llmdeployment("grow", ns, accelerator="nvidia", tensorParallelSize=4)
    )
    first = wait_for(lambda: child(cluster, "Deployment", ns, "grow"), what="the Deployment")
    cluster.kube.patch(
        "LLMDeployment",
        ns,
        "grow",
        {"spec": {"tensorParallelSize": 8, "replicas": 3, "engine": {"maxModelLen": 4096}}},
    )
    dep = wait_for(
        lambda: (d := child(cluster, "Deployment", ns, "grow"))["spec"]["replicas"] == 3 and d,
        what="3 replicas",
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert flag(container["args"], "--tensor-parallel-size") == "8"
    assert flag(container["args"], "--max-model-len") == "4096"
    assert dep["metadata"]["uid"] == first["metadata"]["uid"]  # patched in place: a rolling update
    wait_for(
        lambda: status_of(cluster, ns, "grow").get("observedGeneration") == 2,
        what="observedGeneration 2",
    )
    assert child(cluster, "LLMDeployment", ns, "grow")["metadata"]["generation"] == 2


def test_deleted_or_edited_children_are_restored(cluster, ns):
    cluster.kube.create(
        "LLMDeployment",
        ns,
        llmdeployment(
            "keep", ns, autoscaling={"maxReplicas": 3}, podDisruptionBudget={"maxUnavailable": 1}
        ),
    )
    svc = wait_for(lambda: child(cluster, "Service", ns, "keep"), what="the Service")
    wait_for(lambda: child(cluster, "HorizontalPodAutoscaler", ns, "keep"), what="the HPA")
    cluster.kube.delete("Service", ns, "keep")
    restored = wait_for(lambda: child(cluster, "Service", ns, "keep"), what="the Service back")
    assert restored["metadata"]["uid"] != svc["metadata"]["uid"]
    cluster.kube.patch(
        "Deployment",
        ns,
        "keep",
        {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "server", "image": "someone/else:latest"}]}
                }
            }
        },
    )
    wait_for(
        lambda: args_of(child(cluster, "Deployment", ns, "keep"))[:1] == ["serve"],
        what="the container back",
    )
    assert (
        child(cluster, "Deployment", ns, "keep")["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == "registry.test/pagedserve:test-cpu"
    )
    cluster.kube.delete(
        "HorizontalPodAutoscaler", ns, "keep"
    )  # not watched: the resync brings it back
    cluster.kube.delete("PodDisruptionBudget", ns, "keep")
    wait_for(lambda: child(cluster, "HorizontalPodAutoscaler", ns, "keep"), what="the HPA back")
    wait_for(lambda: child(cluster, "PodDisruptionBudget", ns, "keep"), what="the PDB back")


def test_optional_children_come_and_go_with_the_spec(cluster, ns):
    cluster.kube.create("LLMDeployment", ns, llmdeployment("opt", ns))
    wait_for(lambda: child(cluster, "Deployment", ns, "opt"), what="the Deployment")
    cluster.kube.patch(
        "LLMDeployment",
        ns,
        "opt",
        {
            "spec": {
                "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
                "podDisruptionBudget": {"minAvailable": 1},
                "modelCache": {"size": "20Gi"},
                "nodeSelector": {"pool": "cpu"},
            }
        },
    )
    wait_for(
        lambda: child(cluster, "PodDisruptionBudget", ns, "opt"), what="the PDB"
    )  # the last one made
    assert child(cluster, "HorizontalPodAutoscaler", ns, "opt")["spec"]["maxReplicas"] == 4
    assert (
        child(cluster, "PersistentVolumeClaim", ns, "opt-model-cache")["spec"]["resources"][
            "requests"
        ]["storage"]
        == "20Gi"
    )
    assert child(cluster, "PodDisruptionBudget", ns, "opt")["spec"]["minAvailable"] == 1
    wait_for(
        lambda: child(cluster, "Deployment", ns, "opt")["spec"]["template"]["spec"].get(
            "nodeSelector"
        ),
        what="the nodeSelector",
    )
    cluster.kube.patch(
        "LLMDeployment",
        ns,
        "opt",
        {
            "spec": {
                "autoscaling": None,
                "podDisruptionBudget": None,
                "modelCache": None,
                "nodeSelector": None,
            }
        },
    )
    wait_for(
        lambda: child(cluster, "HorizontalPodAutoscaler", ns, "opt") is None, what="the HPA gone"
    )
    wait_for(
        lambda: child(cluster, "PersistentVolumeClaim", ns, "opt-model-cache") is None,
        what="the PVC gone",
    )
    assert child(cluster, "PodDisruptionBudget", ns, "opt") is None
    pod = child(cluster, "Deployment", ns, "opt")["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert next(v for v in pod["volumes"] if v["name"] == "model-cache") == {
        "name": "model-cache",
        "emptyDir": {},
    }


def test_bad_spec_gets_a_condition_and_an_event_and_others_are_still_served(cluster, ns):
    cluster.kube.create("LLMDeployment", ns, llmdeployment("bad", ns, tensorParallelSize=0))
    cluster.kube.create(
        "LLMDeployment", ns, llmdeployment("badcache", ns, modelCache={"size": "lots"})
    )
    cluster.kube.create("LLMDeployment", ns, llmdeployment("good", ns))
    wait_for(lambda: child(cluster, "Deployment", ns, "good"), what="the good one's Deployment")
    for name, fragment in (
        ("bad", "tensorParallelSize must be an integer >= 1, got 0"),
        ("badcache", "not a Kubernetes quantity: 'lots'"),
    ):
        owner = wait_for(
            lambda name=name: (
                condition(child(cluster, "LLMDeployment", ns, name), "Ready")
                and child(cluster, "LLMDeployment", ns, name)
            ),
            what=f"{name}'s condition",
        )
        ready = condition(owner, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec") and fragment in ready[
            "message"
        ]
        assert owner["status"]["phase"] == "Failed"
        warning = wait_for(
            lambda name=name: [
                e
                for e in events(cluster, ns, name)
                if e["type"] == "Warning" and e["reason"] == "InvalidSpec"
            ],
            what="a Warning event",
        )
        assert fragment in warning[0]["message"]
        assert child(cluster, "Deployment", ns, name) is None
    # no hot loop: resyncs (every second here) re-check, but write and announce nothing new
    status_writes = lambda: sum(
        1
        for r in cluster.requests()
        if r.method == "PATCH"
        and r.url.path.endswith(f"/namespaces/{ns}/llmdeployments/bad/status")
    )
    before = status_writes()
    resyncs = lambda: sum(
        1
        for r in cluster.requests()
        if r.method == "GET" and r.url.path.endswith(f"/namespaces/{ns}/llmdeployments/bad")
    )
    seen = resyncs()
    wait_for(lambda: resyncs() >= seen + 2, what="two resyncs")
    assert status_writes() == before
    assert len([e for e in events(cluster, ns, "bad") if e["reason"] == "InvalidSpec"]) == 1
    cluster.kube.patch("LLMDeployment", ns, "bad", {"spec": {"tensorParallelSize": 2}})
    dep = wait_for(
        lambda: child(cluster, "Deployment", ns, "bad"), what="the fixed one's Deployment"
    )
    assert flag(args_of(dep), "--tensor-parallel-size") == "2"
    wait_for(
        lambda: (
            condition(child(cluster, "LLMDeployment", ns, "bad"), "Reconciled").get("status")
            == "True"
        ),
        what="Reconciled=True",
    )


def test_missing_secret_waits_for_the_secret(cluster, ns):
    cluster.kube.create(
        "LLMDeployment",
        ns,
        llmdeployment("gated", ns, hfTokenSecret={"name": "hf", "key": "token"}),
    )
    owner = wait_for(
        lambda: (
            condition(child(cluster, "LLMDeployment", ns, "gated"), "Ready")
            and child(cluster, "LLMDeployment", ns, "gated")
        ),
        what="a condition",
    )
    assert condition(owner, "Reconciled")["reason"] == "SecretNotFound"
    assert "Secret 'hf' not found" in condition(owner, "Ready")["message"]
    assert child(cluster, "Deployment", ns, "gated") is None  # pods would only fail to start
    cluster.kube.create(
        "Secret",
        ns,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hf"},
            "data": {"token": "aGZfeHh4"},
        },
    )
    dep = wait_for(
        lambda: child(cluster, "Deployment", ns, "gated"), what="the Deployment after the Secret"
    )
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}


def test_name_taken_by_a_foreign_object_is_not_overwritten(cluster, ns):
    cluster.kube.create(
        "Service",
        ns,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "taken"},
            "spec": {"ports": [{"port": 80}]},
        },
    )
    cluster.kube.create("LLMDeployment", ns, llmdeployment("taken", ns))
    owner = wait_for(
        lambda: (
            condition(child(cluster, "LLMDeployment", ns, "taken"), "Reconciled")
            and child(cluster, "LLMDeployment", ns, "taken")
        ),
        what="a condition",
    )
    assert condition(owner, "Reconciled")["reason"] == "NameConflict"
    assert child(cluster, "Service", ns, "taken")["spec"]["ports"] == [{"port": 80}]
