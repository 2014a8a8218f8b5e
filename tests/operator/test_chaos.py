"""The real operator against a misbehaving API server: random 409s, 500s, answers lost after
the write, slow answers and dropped watch streams (seeded), and writes that keep failing.

It must converge to the right children, create nothing twice, never crash, and back off
rather than hot-loop: the requests it sends in a measured window stay under a bound worked out
from its resync interval and retry schedule, which a loop retrying without delay (hundreds of
requests a second on localhost) breaks at once. PAGEDSERVE_FULL_CHAOS=1 runs the full sizes.
The figures each run measured are printed (pytest -s); docs/reliability.md lists them.
"""

import collections
import math
import os
import time

import pytest

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.manifests import child_name
from tests.kube_emulator import (
    OPERATOR_AGENTS,
    Faults,
    condition,
    deployment_ready,
    diverged,
    llmdeployment,
    running_operator,
    wait_for,
)

FULL = os.environ.get("PAGEDSERVE_FULL_CHAOS") == "1"
SIZE = 40 if FULL else 8  # LLMDeployments under random faults
SEEDS = [7, 8, 9] if FULL else [7]
WINDOW = 10.0 if FULL else 3.0  # seconds over which requests are counted
RESYNC = 1.0
FAULTS = dict(conflict=0.1, error=0.1, lost=0.05, slow=0.2, max_delay=0.2, watch_lifetime=2.0)
WATCHED = 3  # watch streams the operator keeps: LLMDeployments, Deployments, Services
CHILD_KINDS = (
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "PersistentVolumeClaim",
    "ScaledObject",
    "InferencePool",
)
IMAGE_ENV = {
    "PAGEDSERVE_IMAGE_CPU": "registry.test/pagedserve:cpu",
    "PAGEDSERVE_IMAGE_AMD": "registry.test/pagedserve:rocm",
    "PAGEDSERVE_IMAGE_NVIDIA": "registry.test/pagedserve:cuda",
}


@pytest.fixture
def config(cluster, monkeypatch) -> OperatorConfig:
    """The operator's settings, in the environment running_operator starts it with."""
    for key, value in {
        "KUBECONFIG": cluster.kubeconfig,
        "PAGEDSERVE_RESYNC_INTERVAL": str(RESYNC),
        "PAGEDSERVE_RETRY_DELAY": "5",
        **IMAGE_ENV,
    }.items():
        monkeypatch.setenv(key, value)
    return OperatorConfig.from_env()


def spec(i: int) -> dict:
    """A mix of what users ask for: every accelerator, TP 1-8, and every optional child."""
    return [
        dict(accelerator="cpu", inferencePool={"enabled": True}),
        dict(
            accelerator="amd",
            tensorParallelSize=4,
            autoscaling={"maxReplicas": 3},
            podDisruptionBudget={"maxUnavailable": 1},
        ),
        dict(accelerator="nvidia", tensorParallelSize=2, modelCache={"size": "10Gi"}, replicas=2),
        dict(
            accelerator="amd",
            tensorParallelSize=8,
            engine={"maxModelLen": 4096},
            autoscaling={
                "engine": "keda",
                "prometheusAddress": "http://prometheus:9090",
                "maxReplicas": 2,
            },
        ),
    ][i % 4]


def operator_requests(cluster, since: int, fragment: str = "") -> list:
    return [
        r
        for r in cluster.requests()[since:]
        if r.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS) and fragment in r.url.path
    ]


def converged(cluster, config, ns: str, names: list[str]) -> bool:
    return all(not diverged(cluster.kube, config, ns, name) for name in names)


def live_uids(cluster, ns: str) -> dict:
    return {
        (kind, o["metadata"]["name"]): o["metadata"]["uid"]
        for kind in CHILD_KINDS
        for o in cluster.objects(kind, ns)
    }


def per_resource(requests: list) -> tuple[collections.Counter, int]:
    """Requests per LLMDeployment (its own and its children's, which are named after it), and
    the rest: watches, lists, creates and Events, which name no object."""
    counts = collections.Counter(r.name.removesuffix("-model-cache") for r in requests if r.name)
    return counts, sum(1 for r in requests if not r.name)


def resource_bound(window: float) -> float:
    """Most requests about one converged LLMDeployment in `window` seconds.

    A resync pass reads the LLMDeployment and each of its possible children (a GET per kind),
    one pass every RESYNC seconds; a handler retry left over from the faults (its delays
    double, so at most one in a short window) costs up to 8 more.
    """
    gets = 1 + len(CHILD_KINDS)
    return gets * (window / RESYNC + 1) + 8


def stream_bound(window: float, lifetime: float | None) -> float:
    """Most requests naming no object in `window` seconds: each watch stream dropped at most
    every lifetime/2 seconds and re-opened with a list and a watch, and a failed re-open
    retried at most once a second."""
    drops = window / (lifetime / 2) + 1 if lifetime else 1
    return WATCHED * (2 * drops + window)


@pytest.mark.timeout(300 if FULL else 150)
@pytest.mark.parametrize("seed", SEEDS)
def test_converges_under_random_faults_without_duplicates_or_hot_loops(cluster, config, ns, seed):
    names = [f"chaos-{i}" for i in range(SIZE)]
    faults = Faults(seed=seed, **FAULTS)
    cluster.inject(faults)
    started = time.monotonic()
    with running_operator(cluster, namespaces=(ns,)) as runner:
        for i, name in enumerate(names):
            cluster.kube.create("LLMDeployment", ns, llmdeployment(name, ns, **spec(i)))
        # polled slowly: each check is 6 reads per resource, which would crowd the operator out
        wait_for(
            lambda: converged(cluster, config, ns, names),
            timeout=120,
            interval=0.5,
            what="every child as the spec asks",
        )
        converge_s = time.monotonic() - started
        uids = live_uids(cluster, ns)
        for name in names:  # as the Deployment controller reports once the pods pass their probes
            deployment_ready(cluster.kube, ns, name)
        wait_for(
            lambda: all(
                (o.get("status") or {}).get("phase") == "Ready"
                for o in cluster.objects("LLMDeployment", ns)
            ),
            timeout=60,
            what="all Ready",
        )
        ready_s = time.monotonic() - started
        # still under faults: spec changes are patched in, a deleted child comes back
        changed, dropped, restored = names[0], names[1], names[2]
        cluster.kube.patch(
            "LLMDeployment", ns, changed, {"spec": {"tensorParallelSize": 2, "replicas": 3}}
        )
        cluster.kube.patch(
            "LLMDeployment",
            ns,
            dropped,
            {"spec": {"autoscaling": None, "podDisruptionBudget": None}},
        )
        cluster.kube.delete("Service", ns, restored)
        wait_for(
            lambda: converged(cluster, config, ns, names),
            timeout=60,
            interval=0.5,
            what="the changes applied",
        )
        # the back-off check: the converged operator, counted over a window under the same faults
        # but fast answers, so that a loop retrying without delay would run at full speed
        fast = Faults(seed=seed, **{**FAULTS, "slow": 0.0})
        cluster.inject(fast)
        mark, window_start = len(cluster.requests()), time.monotonic()
        time.sleep(WINDOW)
        sent, window = operator_requests(cluster, mark), time.monotonic() - window_start
        injected = dict(faults.injected + fast.injected)
        cluster.inject(None)
        cluster.kube.create("LLMDeployment", ns, llmdeployment("after", ns))  # still serving
        wait_for(
            lambda: not diverged(cluster.kube, config, ns, "after"),
            what="a new resource after the faults",
        )
    assert runner.exception is None
    assert "unrecoverable error" not in runner.output
    by_resource, streams = per_resource(sent)
    busiest = max(by_resource.values(), default=0)
    print(
        f"\nchaos seed={seed} resources={SIZE}: children converged in {converge_s:.1f}s, "
        f"all Ready in {ready_s:.1f}s; in {window:.1f}s converged: {len(sent)} requests, "
        f"at most {busiest} about one resource "
        f"(bound {resource_bound(window):.0f}), {streams} watches/lists/creates "
        f"(bound {stream_bound(window, FAULTS['watch_lifetime']):.0f}); injected {injected}"
    )
    assert busiest <= resource_bound(window), (
        f"a hot loop? {by_resource.most_common(3)} in {window:.1f}s"
    )
    assert streams <= stream_bound(window, FAULTS["watch_lifetime"]), (
        f"{streams} stream requests in {window:.1f}s"
    )
    for fault in ("409", "500", "lost", "slow", "watch_closed", "watch_gone"):
        assert injected.get(fault, 0) >= 1, (
            f"no {fault} was injected: the test proved less than it claims"
        )
    # nothing twice, nothing lost: exactly the expected children, each made once (same uid)
    final = live_uids(cluster, ns)
    wanted = {**{name: spec(i) for i, name in enumerate(names)}, "after": {}}
    wanted[dropped] = {
        k: v for k, v in wanted[dropped].items() if k not in ("autoscaling", "podDisruptionBudget")
    }
    assert set(final) == {
        (kind, child_name(kind, name)) for name, asked in wanted.items() for kind in kinds(asked)
    }
    kept = {key: uid for key, uid in uids.items() if key in final and key != ("Service", restored)}
    assert {key: final[key] for key in kept} == kept
    assert final[("Service", restored)] != uids[("Service", restored)]
    assert cluster.kube.get("Deployment", ns, changed)["spec"]["replicas"] == 3


def kinds(asked: dict) -> list[str]:
    """The children a spec asks for."""
    optional = {
        "PodDisruptionBudget": "podDisruptionBudget",
        "PersistentVolumeClaim": "modelCache",
        "InferencePool": "inferencePool",
    }
    engine = (
        (asked.get("autoscaling") or {}).get("engine", "hpa") if asked.get("autoscaling") else None
    )
    scaler = {"hpa": ["HorizontalPodAutoscaler"], "keda": ["ScaledObject"], None: []}[engine]
    return ["Deployment", "Service", *scaler] + [
        kind for kind, field in optional.items() if asked.get(field)
    ]


@pytest.mark.timeout(120)
def test_backs_off_while_writes_keep_failing_and_serves_the_rest(cluster, config, ns):
    # writes fail until the API recovers: in one namespace every write, kopf's own bookkeeping
    # included; in the other only our children and status, so kopf retries our handler on the
    # delays the handler asks for, and those are what is checked there
    down = {"every write": f"{ns}-all", "children and status": f"{ns}-children"}
    cluster.inject(
        Faults(
            broken=(
                f"/namespaces/{down['every write']}/",
                *(
                    f"/namespaces/{down['children and status']}/{kind}"
                    for kind in ("deployments", "services", "llmdeployments/stuck/status")
                ),
            )
        )
    )
    with running_operator(cluster, namespaces=(ns, *down.values())) as runner:
        for stuck_ns in down.values():
            cluster.kube.create("LLMDeployment", stuck_ns, llmdeployment("stuck", stuck_ns))
        cluster.kube.create("LLMDeployment", ns, llmdeployment("fine", ns))
        wait_for(
            lambda: not diverged(cluster.kube, config, ns, "fine"),
            what="the healthy resource served",
        )
        tries = lambda stuck_ns: [
            r
            for r in operator_requests(cluster, 0, f"/namespaces/{stuck_ns}/deployments")
            if r.method == "POST"
        ]
        wait_for(
            lambda: all(len(tries(stuck_ns)) >= 2 for stuck_ns in down.values()),
            what="two tries each",
        )
        mark, window_start = len(cluster.requests()), time.monotonic()
        time.sleep(WINDOW + 1)
        sent = {
            what: operator_requests(cluster, mark, f"/namespaces/{stuck_ns}/")
            for what, stuck_ns in down.items()
        }
        window = time.monotonic() - window_start
        cluster.inject(None)  # the API recovers: the stuck resources converge without a restart
        for stuck_ns in down.values():
            wait_for(
                lambda stuck_ns=stuck_ns: not diverged(cluster.kube, config, stuck_ns, "stuck"),
                what=f"{stuck_ns}/stuck served",
            )
            wait_for(
                lambda stuck_ns=stuck_ns: (
                    condition(
                        cluster.kube.get("LLMDeployment", stuck_ns, "stuck"), "Reconciled"
                    ).get("status")
                    == "True"
                ),
                what=f"{stuck_ns}/stuck's status written",
            )
    assert runner.exception is None and "unrecoverable error" not in runner.output
    # every try is a resync pass or a handler retry, each at most 8 requests (reads, then the
    # failing create or status write, kopf's annotation patch); kopf retries its own failed
    # patch after 1, 1, 2, 3, 5... seconds
    bound = 8 * (window / RESYNC + 1) + 8 * (math.log2(window) + 2) + (window + 1)
    for what, requests in sent.items():
        by_resource, streams = per_resource(requests)
        writes = sum(1 for r in requests if r.method != "GET")
        print(
            f"\n{what} failing for {window:.1f}s: {len(requests)} requests about the stuck "
            "resource "
            f"({writes} writes, {streams} watches/creates; bound {bound:.0f})"
        )
        assert by_resource["stuck"] + streams <= bound, (
            f"a hot loop? {len(requests)} requests in {window:.1f}s"
        )
