"""Pure parts of reconciliation: drift detection and the status computed from a Deployment."""

import pytest

from pagedserve.operator.apply import is_subset, patch_body, strip_none
from pagedserve.operator.status import build_status, event_for, rollout, same_status


def test_server_defaults_are_not_drift():
    desired = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "i",
                            "resources": {"limits": {"amd.com/gpu": "4", "memory": "1024Mi"}},
                        }
                    ],
                    "nodeSelector": None,
                }
            }
        }
    }
    live = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "i",
                            "imagePullPolicy": "IfNotPresent",
                            "resources": {"limits": {"amd.com/gpu": "4", "memory": "1Gi"}},
                        }
                    ],
                    "dnsPolicy": "ClusterFirst",
                }
            },
            "revisionHistoryLimit": 10,
        },
        "status": {"replicas": 1},
    }
    assert is_subset(desired, live)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c["spec"]["template"]["spec"]["containers"][0].update(image="other"),
        lambda c: c["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
            {"amd.com/gpu": "2"}
        ),
        lambda c: c["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"}),
        lambda c: c["spec"]["template"]["spec"].update(
            nodeSelector={"a": "b"}
        ),  # the spec asks for none
    ],
)
def test_edits_are_drift(edit):
    desired = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "i",
                            "resources": {"limits": {"amd.com/gpu": "4"}},
                        }
                    ],
                    "nodeSelector": None,
                }
            }
        }
    }
    live = strip_none(desired)
    assert is_subset(desired, live)
    edit(live)
    assert not is_subset(desired, live)


def test_patch_keeps_nulls_for_removed_fields_but_not_inside_lists():
    desired = {"spec": {"nodeSelector": None, "containers": [{"name": "s", "resources": None}]}}
    assert patch_body(desired) == {"spec": {"nodeSelector": None, "containers": [{"name": "s"}]}}
    assert strip_none(desired) == {"spec": {"containers": [{"name": "s"}]}}


def deployment(
    want=2, ready=0, updated=0, replicas=0, observed=1, generation=1, progressing=None
) -> dict:
    conditions = (
        [{"type": "Progressing", "status": "True", "reason": progressing}] if progressing else []
    )
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": want},
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "replicas": replicas,
            "observedGeneration": observed,
            "conditions": conditions,
        },
    }


@pytest.mark.parametrize(
    "dep, phase",
    [
        (None, "Pending"),
        (deployment(observed=None), "Pending"),
        (deployment(updated=2, replicas=2, progressing="ReplicaSetUpdated"), "Progressing"),
        (
            deployment(ready=1, updated=2, replicas=2, progressing="ReplicaSetUpdated"),
            "Progressing",
        ),
        (deployment(ready=2, updated=2, replicas=2, progressing="NewReplicaSetAvailable"), "Ready"),
        (
            deployment(ready=2, updated=1, replicas=3, progressing="ReplicaSetUpdated"),
            "Progressing",
        ),
        (deployment(ready=2, updated=2, replicas=2, observed=1, generation=2), "Progressing"),
        (
            deployment(ready=1, updated=2, replicas=2, progressing="NewReplicaSetAvailable"),
            "Degraded",
        ),
        (deployment(progressing="ProgressDeadlineExceeded"), "Failed"),
        (deployment(want=0), "Stopped"),
    ],
)
def test_phase_follows_the_deployment(dep, phase):
    assert rollout(dep)[0] == phase


def owner(status=None) -> dict:
    return {
        "metadata": {"name": "m", "namespace": "ns", "generation": 3},
        "spec": {},
        "status": status,
    }


def test_status_fields_and_conditions():
    status = build_status(owner(), deployment(ready=2, updated=2, replicas=2), 8000)
    assert (status["phase"], status["replicas"], status["readyReplicas"], status["ready"]) == (
        "Ready",
        2,
        2,
        "2/2",
    )
    assert status["endpoint"] == "http://m.ns.svc.cluster.local:8000/v1"
    assert status["observedGeneration"] == 3
    assert (
        status["selector"]
        == "app.kubernetes.io/component=server,app.kubernetes.io/instance=m,"
        "app.kubernetes.io/name=pagedserve"
    )
    assert {(c["type"], c["status"]) for c in status["conditions"]} == {
        ("Reconciled", "True"),
        ("Ready", "True"),
    }


def test_a_problem_fails_both_conditions_with_its_reason():
    status = build_status(
        owner(), None, 8000, ("SecretNotFound", "spec.hfTokenSecret: Secret 'hf' not found")
    )
    assert status["phase"] == "Failed"
    for cond in status["conditions"]:
        assert (cond["status"], cond["reason"]) == ("False", "SecretNotFound")
        assert "Secret 'hf' not found" in cond["message"]


def test_unchanged_status_keeps_its_transition_times_and_is_not_news():
    first = build_status(owner(), deployment(ready=1, updated=2, replicas=2), 8000)
    for cond in first["conditions"]:
        cond["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    again = build_status(owner(first), deployment(ready=1, updated=2, replicas=2), 8000)
    assert same_status(first, again)
    assert event_for(first, again) is None
    ready = build_status(owner(first), deployment(ready=2, updated=2, replicas=2), 8000)
    assert not same_status(first, ready)
    assert event_for(first, ready) == ("Normal", "AllReplicasReady", "Ready: 2/2 replicas ready")
    assert [c["lastTransitionTime"] for c in ready["conditions"]][
        0
    ] == "2020-01-01T00:00:00Z"  # Reconciled stayed True


def test_failures_are_warnings_once_per_distinct_message():
    bad = build_status(
        owner(),
        None,
        8000,
        ("InvalidSpec", "spec.tensorParallelSize must be an integer >= 1, got 0"),
    )
    assert event_for(None, bad)[0:2] == ("Warning", "InvalidSpec")
    assert (
        event_for(
            bad,
            build_status(owner(bad), None, 8000, ("InvalidSpec", bad["conditions"][0]["message"])),
        )
        is None
    )
    worse = build_status(
        owner(bad), None, 8000, ("InvalidSpec", "spec.accelerator must be one of amd, nvidia, cpu")
    )
    assert event_for(bad, worse)[0] == "Warning"
