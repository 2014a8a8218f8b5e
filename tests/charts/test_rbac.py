"""The chart grants the operator exactly what it calls: the rules equal
pagedserve.operator.rbac, and a recorded run of the real operator, started with the chart's own
command line against a Kubernetes emulator, makes no call the chart does not allow."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

rbac = pytest.importorskip(
    "pagedserve.operator.rbac", reason="the operator's RBAC list (issue 6) has not landed"
)

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "charts" / "pagedserve" / "crds"
PEERING_RESOURCES = {"kopfpeerings", "clusterkopfpeerings"}
MODES = {  # name -> values
    "cluster-wide, peering": {},
    "cluster-wide, standalone": {"operator": {"peering": {"enabled": False}}},
    "namespaced, peering": {"operator": {"watchNamespaces": ["team-a"]}},
    "namespaced, standalone": {
        "operator": {"watchNamespaces": ["team-a"], "peering": {"enabled": False}}
    },
}


def triples(rules) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a list of policy rules grants."""
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def granted(chart, values) -> tuple[set, set]:
    """What the rendered chart grants: (cluster-wide, in each watched namespace)."""
    docs = chart.render(values)
    cluster = set().union(*[triples(r["rules"]) for r in chart.find(docs, "ClusterRole")])
    roles = chart.find(docs, "Role")
    per_ns = [triples(r["rules"]) for r in roles]
    assert all(t == per_ns[0] for t in per_ns)  # every watched namespace gets the same Role
    return cluster, (per_ns[0] if per_ns else set())


def needed(cluster_wide: bool, peering: bool) -> set:
    """What the operator calls in a mode, from its own list: kopf peers through cluster
    objects when serving all namespaces, namespaced ones otherwise, none when standalone."""
    rules = rbac.policy_rules(rbac.NAMESPACED + rbac.CLUSTER)
    keep = ("clusterkopfpeerings" if cluster_wide else "kopfpeerings") if peering else None
    return {t for t in triples(rules) if t[1] not in PEERING_RESOURCES or t[1] == keep}


@pytest.mark.parametrize("mode", MODES)
def test_chart_grants_exactly_the_operators_rbac_list(chart, mode):
    values = MODES[mode]
    cluster_wide = "cluster-wide" in mode
    cluster, namespaced = granted(chart, values)
    expected = needed(cluster_wide, "peering" in mode and "standalone" not in mode)
    assert (cluster if cluster_wide else namespaced) == expected
    assert (namespaced if cluster_wide else cluster) == set()


def test_the_rbac_list_is_scoped_as_the_chart_assumes():
    # CLUSTER holds only kopf's cluster peering; everything else is namespaced
    assert {r.resource for r in rbac.CLUSTER} == {"clusterkopfpeerings"}
    assert "kopfpeerings" in {r.resource for r in rbac.NAMESPACED}


# --- a recorded run ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(cluster, path: str, body: dict) -> None:
    request = urllib.request.Request(
        cluster.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def split_crds(tmp: Path) -> list[Path]:
    """The chart's CRD files, one document per file (as the emulator reads them)."""
    out = []
    for path in sorted(CRDS.glob("*.yaml")):
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            out.append(tmp / f"{path.stem}-{i}.yaml")
            out[-1].write_text(yaml.safe_dump(doc))
    return out


def start_operator(chart_container: dict, cluster, port: int) -> subprocess.Popen:
    """`pagedserve operator` with the chart's arguments and environment (liveness on a free
    port)."""
    args = list(chart_container["args"])
    at = args.index("--liveness") + 1
    url = urlparse(args[at])
    args[at] = url._replace(netloc=f"127.0.0.1:{port}").geturl()
    exe = Path(sys.executable).parent / chart_container["command"][0]
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "pagedserve.cli"]
    env = {
        **os.environ,
        "KUBECONFIG": cluster.kubeconfig,
        "POD_ID": "operator-test-pod",
        "PAGEDSERVE_RESYNC_INTERVAL": "1",
    }
    env |= {e["name"]: e["value"] for e in chart_container["env"] if "value" in e}
    return subprocess.Popen(
        command + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def exercise(cluster, ns: str, testing) -> None:
    """Drive the operator through what it does in a cluster: create children (optional ones
    too), delete them when the spec drops them, restore a deleted child, report a bad spec."""
    kube, wait_for = cluster.kube, testing.wait_for
    kube.create(
        "Secret",
        ns,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "hf"},
            "data": {"token": "aGZfeA=="},
        },
    )
    kube.create(
        "LLMDeployment",
        ns,
        testing.llmdeployment(
            "chat",
            ns,
            hfTokenSecret={"name": "hf", "key": "token"},
            modelCache={"size": "1Gi"},
            autoscaling={"minReplicas": 1, "maxReplicas": 2, "targetRequestsWaiting": 4},
            podDisruptionBudget={"maxUnavailable": 1},
        ),
    )
    for kind in (
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
    ):
        wait_for(
            lambda kind=kind: kube.get(kind, ns, "chat") or cluster.objects(kind, ns),
            what=f"{kind} in {ns}",
        )
    wait_for(
        lambda: (kube.get("LLMDeployment", ns, "chat").get("status") or {}).get("phase"),
        what="status",
    )
    kube.patch(
        "LLMDeployment", ns, "chat", {"spec": {"autoscaling": None, "podDisruptionBudget": None}}
    )
    wait_for(lambda: kube.get("HorizontalPodAutoscaler", ns, "chat") is None, what="HPA removed")
    kube.delete("Service", ns, "chat")
    wait_for(lambda: kube.get("Service", ns, "chat"), what="Service restored")
    kube.create(
        "LLMDeployment",
        ns,
        testing.llmdeployment("bad", ns, hfTokenSecret={"name": "absent", "key": "t"}),
    )
    wait_for(
        lambda: (
            testing.condition(kube.get("LLMDeployment", ns, "bad"), "Ready").get("status")
            == "False"
        ),
        what="Ready=False on a spec naming a missing Secret",
    )


def recorded_run(chart, values: dict, ns: str):
    """Run the chart's operator against an emulator, exercise it; return (requests, calls)."""
    testing = pytest.importorskip("tests.kube_emulator", reason="needs the test extra (kmock)")
    docs = chart.render(values)
    container = chart.operator_container(docs)
    with (
        tempfile.TemporaryDirectory() as tmp,
        testing.EmulatedCluster(crds=split_crds(Path(tmp))) as cluster,
    ):
        for peering in chart.find(docs, "ClusterKopfPeering"):
            post(cluster, "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
        for peering in chart.find(docs, "KopfPeering"):
            post(
                cluster,
                f"/apis/kopf.dev/v1/namespaces/{peering['metadata']['namespace']}/kopfpeerings",
                peering,
            )
        port = free_port()
        proc = start_operator(container, cluster, port)
        try:
            exercise(cluster, ns, testing)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as health:
                assert health.status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                output = proc.communicate(timeout=30)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                output = proc.communicate()[0]
        assert "Traceback" not in output, output[-4000:]
        requests = [
            r
            for r in cluster.requests()
            if r.headers.get("User-Agent", "").startswith(testing.OPERATOR_AGENTS)
            and r.resource is not None
            and r.resource.plural is not None
        ]
        return requests, {tuple(c) for c in cluster.api_calls(testing.OPERATOR_AGENTS)}, output


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_recorded_cluster_wide_run_stays_within_the_cluster_role(chart):
    _, calls, output = recorded_run(chart, {}, "default")
    allowed, _ = granted(chart, {})
    assert calls, output[-3000:]
    assert (
        "[DEBUG" not in output
    )  # the chart's default log level, info, is what the operator logs at
    assert calls <= allowed, f"calls the ClusterRole does not allow: {sorted(calls - allowed)}"
    # the run covered the interesting parts: watches, children, status, events, peering
    for call in [
        ("pagedserve.io", "llmdeployments", "watch"),
        ("pagedserve.io", "llmdeployments/status", "patch"),
        ("apps", "deployments", "create"),
        ("autoscaling", "horizontalpodautoscalers", "delete"),
        ("", "events", "create"),
        ("kopf.dev", "clusterkopfpeerings", "patch"),
    ]:
        assert call in calls, f"the recorded run never made {call}; it checks less than it claims"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_recorded_namespaced_run_stays_within_its_roles(chart):
    values = {"operator": {"watchNamespaces": ["team-a"]}}
    requests, calls, output = recorded_run(chart, values, "team-a")
    cluster_rules, role = granted(chart, values)
    assert cluster_rules == set()
    assert calls, output[-3000:]
    assert calls <= role, f"calls the Role does not allow: {sorted(calls - role)}"
    # a Role only works inside its namespace: no cluster-wide or other-namespace request
    outside = {
        (r.method.value, r.url.path if hasattr(r, "url") else r.resource.plural)
        for r in requests
        if r.namespace != "team-a"
    }
    assert not outside, f"requests outside the watched namespace: {sorted(outside)}"
    assert ("kopf.dev", "kopfpeerings", "patch") in calls
