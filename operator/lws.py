"""A LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) for an LLMDeployment bigger than one node.

One group per replica: a leader pod (node rank 0: schedules, serves HTTP) and size-1 worker
pods (headless `pagedserve serve --node-rank $(LWS_WORKER_INDEX)`: only their ranks), created,
restarted and scaled together by the LWS controller. Every pod gets tp x pp / nodes GPUs and a
memory-backed /dev/shm; the ranks meet at the leader's address, which LWS puts in each pod's
environment as LWS_LEADER_ADDRESS (Kubernetes expands $(VAR) in args from the container's env).
The Service selects the leaders only (LWS labels them worker-index 0).
"""
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.fields import SpecError
from pagedserve.operator.labels import meta, pod_labels, selector_labels
from pagedserve.operator.pod import pod_template, server_args
from pagedserve.operator.spec import LLMDeploymentSpec

API_VERSION = "leaderworkerset.x-k8s.io/v1"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
MASTER_PORT = 29500  # torch.distributed's customary rendezvous port, on the leader pod


def group_size(spec: LLMDeploymentSpec, pipeline_parallel_size: int, gpus_per_node: int) -> int:
    """Pods per group: the ranks (tp x pp) over the GPUs one node has; SpecError naming the
    fields when they do not split into whole pods."""
    world = spec.tensor_parallel_size * pipeline_parallel_size
    if gpus_per_node < 1 or (world > gpus_per_node and world % gpus_per_node):
        raise SpecError(f"tensorParallelSize x pipelineParallelSize = {world} ranks do not fill "
                        f"whole nodes of gpusPerNode={gpus_per_node}")
    return max(1, world // gpus_per_node)


def node_args(spec: LLMDeploymentSpec, pp: int, nodes: int, rank: str) -> list[str]:
    """The server's args plus the pipeline and node layout; rank is "0" or $(LWS_WORKER_INDEX)."""
    return server_args(spec) + ["--pipeline-parallel-size", str(pp), "--nnodes", str(nodes),
                   "--node-rank", rank, "--master-addr", "$(LWS_LEADER_ADDRESS)",
                   "--master-port", str(MASTER_PORT)]


def _template(spec: LLMDeploymentSpec, config: OperatorConfig, name: str, claim: str | None,
              args: list[str], gpus: int, leader: bool) -> dict:
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


def leader_worker_set(owner: dict, spec: LLMDeploymentSpec, config: OperatorConfig,
                      pipeline_parallel_size: int, gpus_per_node: int,
                      claim: str | None = None) -> dict:
    """The LeaderWorkerSet standing in for the Deployment of a multi-node LLMDeployment."""
    name = owner["metadata"]["name"]
    pp = pipeline_parallel_size
    nodes = group_size(spec, pp, gpus_per_node)
    gpus = spec.tensor_parallel_size * pp // nodes
    leader = _template(spec, config, name, claim, node_args(spec, pp, nodes, "0"), gpus, True)
    worker = _template(spec, config, name, claim,
                       node_args(spec, pp, nodes, "$(LWS_WORKER_INDEX)"), gpus, False)
    return {
        "apiVersion": API_VERSION, "kind": "LeaderWorkerSet", "metadata": meta(owner),
        "spec": {
            "replicas": spec.replicas,
            # the leader (rank 0's store and control port) first, then its workers
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": nodes,
                # a rank that dies takes the group's step state with it: restart them all
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader, "workerTemplate": worker,
            },
        },
    }


def leader_selector(name: str) -> dict:
    """The Service's selector for a multi-node LLMDeployment: its leader pods only."""
    return {**selector_labels(name), WORKER_INDEX_LABEL: "0"}


def ready_groups(lws: dict | None) -> int:
    """Groups whose leader and workers are all ready (LWS's status.readyReplicas)."""
    return int(((lws or {}).get("status") or {}).get("readyReplicas") or 0)
