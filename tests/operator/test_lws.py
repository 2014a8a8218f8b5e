"""The LeaderWorkerSet builder (operator/lws.py): valid against the real LWS CRD, leader and
workers wired to one another through LWS's environment, GPUs per pod, leaders-only selector,
groups scaled by replicas, and sizes that do not fill whole nodes refused."""

import pytest

from pagedserve.operator.apply import strip_none
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.lws import (
    WORKER_INDEX_LABEL,
    leader_selector,
    leader_worker_set,
    ready_groups,
)
from pagedserve.operator.spec import SpecError, parse_spec
from tests.crds.validate import LWS_CRD, load, validate
from tests.kube_emulator import llmdeployment

CONFIG = OperatorConfig(image_cpu="registry.test/ps:cpu", image_amd="registry.test/ps:rocm")


@pytest.fixture(scope="module")
def crd() -> dict:
    return load(LWS_CRD)


def render(tp: int = 8, pp: int = 2, gpus_per_node: int = 8, **spec) -> dict:
    owner = llmdeployment(
        "big",
        "team-a",
        model="meta-llama/Llama-3.1-405B-Instruct",
        tensorParallelSize=tp,
        pipelineParallelSize=pp,
        gpusPerNode=gpus_per_node,
        accelerator="amd",
        **spec,
    )
    owner["metadata"]["uid"] = "uid-big"
    return strip_none(leader_worker_set(owner, parse_spec(owner["spec"]), CONFIG))


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_valid_against_the_lws_crd_with_leader_and_workers_wired(crd):
    lws = render(replicas=3)
    stored = validate(lws, crd)
    group = stored["spec"]["leaderWorkerTemplate"]
    assert stored["spec"]["replicas"] == 3 and group["size"] == 2  # 16 ranks on 8-GPU nodes
    assert group["restartPolicy"] == "RecreateGroupOnPodRestart"
    (leader,) = group["leaderTemplate"]["spec"]["containers"]
    (worker,) = group["workerTemplate"]["spec"]["containers"]
    for c, rank in ((leader, "0"), (worker, "$(LWS_WORKER_INDEX)")):
        args = c["args"]
        assert flag(args, "--node-rank") == rank
        assert (
            flag(args, "--nnodes"),
            flag(args, "--tensor-parallel-size"),
            flag(args, "--pipeline-parallel-size"),
        ) == ("2", "8", "2")
        assert flag(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
        assert c["resources"]["limits"]["amd.com/gpu"] == "8"  # each pod: its node's ranks
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert "readinessProbe" in leader and "ports" in leader
    assert "readinessProbe" not in worker and "ports" not in worker  # headless: no HTTP


def test_service_selects_leaders_and_status_counts_ready_groups():
    selector = leader_selector("big")
    assert selector[WORKER_INDEX_LABEL] == "0"
    leader_labels = render()["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]
    # LWS adds the worker-index label to each pod; the rest must be the template's own
    own = {k: v for k, v in selector.items() if k != WORKER_INDEX_LABEL}
    assert own.items() <= leader_labels.items()
    assert ready_groups({"status": {"readyReplicas": 2, "replicas": 3}}) == 2
    assert ready_groups({}) == 0


@pytest.mark.parametrize(
    "tp,pp,gpus,fragment",
    [
        (4, 3, 8, r"4 x 3 = 12 ranks do not fill whole nodes of spec.gpusPerNode=8"),
        (8, 2, 0, r"spec.gpusPerNode must be an integer >= 1"),
        (8, 0, 8, r"spec.pipelineParallelSize must be an integer >= 1"),
    ],
)
def test_sizes_that_do_not_fill_whole_nodes_are_refused(tp, pp, gpus, fragment):
    with pytest.raises(SpecError, match=fragment):
        render(tp=tp, pp=pp, gpus_per_node=gpus)
