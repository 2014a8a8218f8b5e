"""A LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) for an LLMDeployment bigger than one node.

One group per replica: a leader pod (node rank 0: schedules, serves HTTP) and size-1 worker
pods (headless `pagedserve serve --node-rank $(LWS_WORKER_INDEX)`: only their ranks), created,
restarted and scaled together by the LWS controller. Every pod gets tp x pp / nodes GPUs and a
memory-backed /dev/shm; the ranks meet at the leader's address, which LWS puts in each pod's
environment as LWS_LEADER_ADDRESS (Kubernetes expands $(VAR) in args from the container's env).
The Service selects the leaders only (LWS labels them worker-index 0).
"""

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.labels import meta, pod_labels, selector_labels
from pagedserve.operator.pod import pod_template, server_args
from pagedserve.operator.spec import LLMDeploymentSpec

API_VERSION = "leaderworkerset.x-k8s.io/v1"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
MASTER_PORT = 29500  # torch.distributed's customary rendezvous port, on the leader pod


def node_args(spec: LLMDeploymentSpec, rank: str) -> list[str]:
    """The server's args (with the pipeline size) plus the node layout; rank is "0" or
    $(LWS_WORKER_INDEX)."""
    return server_args(spec) + [
        "--nnodes",
        str(spec.nodes),
        "--node-rank",
        rank,
        "--master-addr",
        "$(LWS_LEADER_ADDRESS)",
        "--master-port",
        str(MASTER_PORT),
    ]


def _template(
    spec: LLMDeploymentSpec,
    config: OperatorConfig,
    name: str,
    claim: str | None,
    args: list[str],
    gpus: int,
    leader: bool,
) -> dict:
    template = pod_template(spec, config, pod_labels(name), claim)
    (c,) = template["spec"]["containers"]
    c["args"] = args
    if spec.gpu_resource:  # one GPU per local rank: this pod's share of the group
        c["resources"]["limits"][spec.gpu_resource] = str(gpus)
    if not leader:  # headless: no HTTP server to probe or scrape
        for key in ("ports", "startupProbe", "readinessProbe", "livenessProbe"):
            c.pop(key)
        template["metadata"]["annotations"] = {}
    return template


def leader_worker_set(
    owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig, claim: str | None = None
) -> dict:
    """The LeaderWorkerSet standing in for the Deployment of a multi-node LLMDeployment
    (spec.multi_node: parse_spec has checked that the ranks fill whole nodes)."""
    name, nodes, gpus = owner["metadata"]["name"], spec.nodes, spec.gpus_per_pod
    leader = _template(spec, config, name, claim, node_args(spec, "0"), gpus, True)
    worker_args = node_args(spec, "$(LWS_WORKER_INDEX)")
    worker = _template(spec, config, name, claim, worker_args, gpus, False)
    return {
        "apiVersion": API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": meta(owner),
        "spec": {
            "replicas": spec.replicas,
            # the leader (rank 0's store and control port) first, then its workers
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": nodes,
                # a rank that dies takes the group's step state with it: restart them all
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
        },
    }


def leader_selector(name: str) -> dict:
    """The Service's selector for a multi-node LLMDeployment: its leader pods only."""
    return {**selector_labels(name), WORKER_INDEX_LABEL: "0"}


def serving_selector(name: str, multi_node: bool) -> dict:
    """The pods that serve HTTP: a multi-node spec's leaders, or every pod; then the leader key
    is None, so a merge patch removes it from a selector a multi-node spec left behind."""
    if multi_node:
        return leader_selector(name)
    return {**selector_labels(name), WORKER_INDEX_LABEL: None}


def ready_groups(lws: dict | None) -> int:
    """Groups whose leader and workers are all ready (LWS's status.readyReplicas)."""
    return int(((lws or {}).get("status") or {}).get("readyReplicas") or 0)
