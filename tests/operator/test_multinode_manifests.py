"""Multi-node LLMDeployments as the operator renders them: a LeaderWorkerSet valid against the
real LWS CRD (v0.10.0, schema and CEL) in place of the Deployment, built-ins valid against
Kubernetes 1.37 strict, the Service, pool and status.selector on the leaders only, and the
refusals the chart's CRD (its CEL rules) and the operator share."""

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from pagedserve.operator.apply import strip_none
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.lws import WORKER_INDEX_LABEL
from pagedserve.operator.manifests import desired_children
from pagedserve.operator.spec import SpecError, parse_spec
from pagedserve.operator.status import build_status
from tests.crds.validate import KEDA_CRD, LWS_CRD, POOL_CRDS, Invalid, load, validate
from tests.kube_emulator import llmdeployment
from tests.operator.conftest import CRD_PATH, EXAMPLES

CONFIG = OperatorConfig(image_cpu="registry.test/ps:cpu", image_amd="registry.test/ps:rocm")
BIG = dict(
    model="meta-llama/Llama-3.1-405B-Instruct",
    accelerator="amd",
    tensorParallelSize=8,
    pipelineParallelSize=2,
    gpusPerNode=8,
)
SHAPES = {
    "2 nodes": BIG,
    "4 nodes of 4, pool, hpa, pdb": {
        **BIG,
        "gpusPerNode": 4,
        "inferencePool": {"enabled": True},
        "autoscaling": {"maxReplicas": 3},
        "podDisruptionBudget": {"maxUnavailable": 1},
    },
    "tp across nodes, shared cache": {
        **BIG,
        "pipelineParallelSize": 1,
        "gpusPerNode": 4,
        "modelCache": {"size": "1Ti", "accessMode": "ReadWriteMany"},
    },
    # KEDA scales the LLMDeployment (groups) on the leaders' waiting requests
    "keda": {
        **BIG,
        "autoscaling": {
            "engine": "keda",
            "maxReplicas": 2,
            "prometheusAddress": "http://prometheus.monitoring:9090",
        },
    },
}


@pytest.fixture(scope="module")
def crds() -> dict:
    return {"lws": load(LWS_CRD), "llmd": load(CRD_PATH), "keda": load(KEDA_CRD)} | {
        "pool " + gen: load(path) for gen, path in POOL_CRDS.items()
    }


def render(name: str = "big", **spec) -> dict[str, dict]:
    owner = llmdeployment(name, "team-a", **spec)
    owner["metadata"]["uid"] = f"uid-{name}"
    children = desired_children(owner, parse_spec(owner["spec"]), CONFIG)
    return {kind: strip_none(child) for kind, child in children.items() if child is not None}


def pods(lws: dict) -> tuple[dict, dict]:
    """The leader's and the first worker's labels, as LWS stamps them on the pods it creates."""
    group = lws["spec"]["leaderWorkerTemplate"]
    leader = {**group["leaderTemplate"]["metadata"]["labels"], WORKER_INDEX_LABEL: "0"}
    worker = {**group["workerTemplate"]["metadata"]["labels"], WORKER_INDEX_LABEL: "1"}
    return leader, worker


@pytest.mark.parametrize("shape", SHAPES)
def test_multi_node_children_are_valid_and_replace_the_deployment(shape, crds):
    validate(llmdeployment("big", "team-a", **SHAPES[shape]), crds["llmd"])  # the CRD takes it
    children = render(**SHAPES[shape])
    assert "Deployment" not in children
    for kind, child in children.items():
        if kind == "LeaderWorkerSet":
            validate(child, crds["lws"])
        elif kind == "ScaledObject":
            validate(child, crds["keda"])
            assert child["spec"]["scaleTargetRef"]["kind"] == "LLMDeployment"
        elif kind == "InferencePool":
            for generation in POOL_CRDS:
                validate(child, crds["pool " + generation])
        else:
            kubernetes_validate.validate(child, "1.37", strict=True)
    group = children["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    ranks = SHAPES[shape]["tensorParallelSize"] * SHAPES[shape]["pipelineParallelSize"]
    assert group["size"] == ranks // SHAPES[shape]["gpusPerNode"]
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        (c,) = template["spec"]["containers"]
        assert c["resources"]["limits"]["amd.com/gpu"] == str(SHAPES[shape]["gpusPerNode"])
        assert c["args"][c["args"].index("--nnodes") + 1] == str(group["size"])


def test_service_pool_and_status_selector_pick_the_leaders_only():
    children = render(**SHAPES["4 nodes of 4, pool, hpa, pdb"])
    leader, worker = pods(children["LeaderWorkerSet"])
    for selector in (
        children["Service"]["spec"]["selector"],
        children["InferencePool"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= leader.items() and not selector.items() <= worker.items()
    # an HPA averages the metric over status.selector's pods: headless workers export none
    owner = llmdeployment("big", "team-a", **BIG)
    status = build_status(owner, {"spec": {"replicas": 1}}, 8000, None, {WORKER_INDEX_LABEL: "0"})
    assert dict(kv.split("=") for kv in status["selector"].split(",")).items() <= leader.items()
    assert f"{WORKER_INDEX_LABEL}=0" in status["selector"]
    # a group is one unit for disruptions: the budget covers every pod of it
    budget = children["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert budget.items() <= leader.items() and budget.items() <= worker.items()


def test_leader_and_workers_meet_at_the_leader_address():
    group = render(**BIG)["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    (leader,) = group["leaderTemplate"]["spec"]["containers"]
    (worker,) = group["workerTemplate"]["spec"]["containers"]
    for c, rank in ((leader, "0"), (worker, "$(LWS_WORKER_INDEX)")):
        args = c["args"]
        assert args.count("--pipeline-parallel-size") == 1
        assert args[args.index("--node-rank") + 1] == rank
        assert args[args.index("--master-addr") + 1] == "$(LWS_LEADER_ADDRESS)"
        assert args[args.index("--distributed-executor-backend") + 1] == "mp"
    assert leader["ports"] and "ports" not in worker


def test_single_node_pipeline_is_a_deployment_with_the_flag():
    children = render(**{**BIG, "tensorParallelSize": 4, "gpusPerNode": 8})
    assert "LeaderWorkerSet" not in children
    (c,) = children["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--pipeline-parallel-size") + 1] == "2"
    assert c["resources"]["limits"]["amd.com/gpu"] == "8"  # tp x pp ranks in the one pod
    assert children["Service"]["spec"]["selector"].get(WORKER_INDEX_LABEL) is None
    kubernetes_validate.validate(children["Deployment"], "1.37", strict=True)


def test_status_counts_ready_groups_from_the_leader_worker_set():
    owner = llmdeployment("big", "team-a", **{**BIG, "replicas": 3})
    lws = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 3},
        "status": {
            "replicas": 3,
            "readyReplicas": 2,
            "updatedReplicas": 3,
            "observedGeneration": 2,
        },
    }
    status = build_status(owner, lws, 8000)
    assert (status["readyReplicas"], status["ready"], status["phase"]) == (2, "2/3", "Progressing")
    lws["status"]["readyReplicas"] = 3
    assert build_status(owner, lws, 8000)["phase"] == "Ready"


BAD = [  # (spec, what the operator says, refused by the CRD too)
    (
        {**BIG, "tensorParallelSize": 4, "pipelineParallelSize": 3},
        "4 x 3 = 12 ranks do not fill whole nodes of spec.gpusPerNode=8",
        True,
    ),
    ({**BIG, "pipelineParallelSize": 0}, "spec.pipelineParallelSize must be an integer >= 1", True),
    ({**BIG, "gpusPerNode": 0}, "spec.gpusPerNode must be an integer >= 1", True),
    (
        {**BIG, "modelCache": {"size": "1Ti"}},
        "spec.modelCache.accessMode ReadWriteOnce with a multi-node",
        True,
    ),
    (
        {**BIG, "podDisruptionBudget": {"minAvailable": 1}},
        "spec.podDisruptionBudget with a multi-node",
        True,
    ),
    (
        {**BIG, "podDisruptionBudget": {"maxUnavailable": "50%"}},
        "takes only maxUnavailable as a count",
        False,
    ),
    (
        {**BIG, "resources": {"limits": {"amd.com/gpu": 16}}},
        "is 16 but each pod runs 8 ranks",
        False,
    ),
    ({**BIG, "engine": {"extraArgs": ["--nnodes=3"]}}, "extraArgs may not set --nnodes", False),
]


@pytest.mark.parametrize("spec, message, crd_refuses", BAD)
def test_bad_multi_node_specs_are_refused_naming_the_fields(spec, message, crd_refuses, crds):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert message in str(info.value)
    if crd_refuses:
        with pytest.raises(Invalid):
            validate(llmdeployment("big", "team-a", **spec), crds["llmd"])


def test_render_prints_the_multi_node_example(crds):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pagedserve",
            "operator",
            "render",
            "-f",
            str(EXAMPLES / "llama3-405b-multinode.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": "/nonexistent",
            "KUBECONFIG": "/nonexistent/kubeconfig",
        },
    )
    assert done.returncode == 0, done.stderr
    objects = {o["kind"]: o for o in yaml.safe_load_all(done.stdout) if o}
    assert set(objects) == {
        "PersistentVolumeClaim",
        "LeaderWorkerSet",
        "Service",
        "PodDisruptionBudget",
    }
    lws = validate(objects["LeaderWorkerSet"], crds["lws"])
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    leader, _ = pods(lws)
    assert objects["Service"]["spec"]["selector"].items() <= leader.items()
    for kind in ("PersistentVolumeClaim", "Service", "PodDisruptionBudget"):
        kubernetes_validate.validate(objects[kind], "1.37", strict=True)
