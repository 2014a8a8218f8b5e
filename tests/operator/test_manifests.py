"""The children the operator builds: valid Kubernetes 1.37 objects for every kind of spec, with
the GPU limits, server flags, probes and wiring the issue asks for."""

import itertools

import kubernetes_validate
import pytest

from pagedserve.cli import build_parser
from pagedserve.operator.apply import strip_none
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.manifests import desired_children, event
from pagedserve.operator.spec import parse_spec

CONFIG = OperatorConfig.from_env({})
VARIANTS = {
    "plain": {},
    "cache+secrets": {
        "modelCache": {"size": "200Gi", "storageClassName": "fast"},
        "hfTokenSecret": {"name": "hf", "key": "token"},
        "apiKeySecret": {"name": "api", "key": "key"},
    },
    "autoscaling+pdb": {
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetRequestsWaiting": 3},
        "podDisruptionBudget": {"maxUnavailable": 1},
        "replicas": 2,
    },
    "everything": {
        "modelCache": {"existingClaim": "shared", "accessMode": "ReadWriteMany"},
        "hfTokenSecret": {"name": "hf", "key": "token"},
        "servedModelName": "m",
        "engine": {
            "maxModelLen": 4096,
            "maxNumSeqs": 32,
            "maxNumBatchedTokens": 2048,
            "gpuMemoryUtilization": 0.85,
            "blockSize": 32,
            "dtype": "bfloat16",
            "enablePrefixCaching": False,
            "maxQueueLen": 100,
            "kvCacheMemory": "2Gi",
            "kvCacheDtype": "bfloat16",
            "extraArgs": ["--seed", "7"],
        },
        "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "128Gi"}},
        "nodeSelector": {"node.kubernetes.io/instance-type": "mi300x"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "llm",
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "service": {"type": "LoadBalancer", "port": 80},
        "autoscaling": {"maxReplicas": 3},
        "podDisruptionBudget": {"minAvailable": "50%"},
    },
}
MATRIX = list(itertools.product(["amd", "nvidia", "cpu"], [1, 4, 8], VARIANTS))


def owner(name="llm", namespace="serving", **spec) -> dict:
    return {
        "apiVersion": "pagedserve.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name, "namespace": namespace, "uid": "0b7c2f4e-uid", "generation": 1},
        "spec": {"model": "meta-llama/Meta-Llama-3-70B-Instruct", **spec},
    }


def build(**spec) -> tuple[dict, dict]:
    body = owner(**spec)
    return body, desired_children(body, parse_spec(body["spec"]), CONFIG)


def server(children: dict) -> dict:
    return children["Deployment"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("accelerator, tp, variant", MATRIX)
def test_every_child_is_a_valid_kubernetes_1_37_object(accelerator, tp, variant):
    body, children = build(accelerator=accelerator, tensorParallelSize=tp, **VARIANTS[variant])
    built = [child for child in children.values() if child is not None]
    built.append(event(body, "Warning", "InvalidSpec", "spec.tensorParallelSize must be >= 1"))
    for child in built:
        kubernetes_validate.validate(strip_none(child), "1.37", strict=True)
    kinds = {kind for kind, child in children.items() if child is not None}
    expected = {"Deployment", "Service"}
    if "autoscaling" in VARIANTS[variant]:
        expected |= {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    if VARIANTS[variant].get("modelCache", {}).get("size"):
        expected.add("PersistentVolumeClaim")
    assert kinds == expected


@pytest.mark.parametrize(
    "accelerator, resource", [("amd", "amd.com/gpu"), ("nvidia", "nvidia.com/gpu")]
)
def test_gpu_pods_ask_for_one_gpu_per_rank(accelerator, resource):
    _, children = build(accelerator=accelerator, tensorParallelSize=4)
    limits = server(children)["resources"]["limits"]
    assert limits == {resource: "4"}
    args = server(children)["args"]
    assert args[:2] == ["serve", "meta-llama/Meta-Llama-3-70B-Instruct"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[args.index("--distributed-executor-backend") + 1] == "mp"
    assert args[args.index("--device") + 1] == "cuda"


def test_rocm_pod_has_shm_device_groups_and_the_configured_image():
    _, children = build(accelerator="amd", tensorParallelSize=8)
    pod = children["Deployment"]["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    assert pod["securityContext"]["supplementalGroups"] == CONFIG.gpu_group_ids
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["image"] == CONFIG.image_amd and CONFIG.image_amd.endswith("-rocm")


def test_cpu_pod_has_no_gpu_and_runs_on_cpu():
    _, children = build(
        accelerator="cpu", tensorParallelSize=1, resources={"limits": {"memory": "2Gi"}}
    )
    container = server(children)
    assert container["resources"] == {"limits": {"memory": "2Gi"}}
    assert container["args"][container["args"].index("--device") + 1] == "cpu"
    assert container["args"][container["args"].index("--distributed-executor-backend") + 1] == "uni"
    assert (
        "supplementalGroups"
        not in children["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    )


def test_args_are_the_real_server_flags():
    # the rendered argument list must parse with `pagedserve serve`'s own parser, to the same values
    _, children = build(accelerator="amd", tensorParallelSize=4, **VARIANTS["everything"])
    container = server(children)
    assert container["command"] == ["pagedserve"]
    assert all(isinstance(a, str) for a in container["args"])
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.model_tag == "meta-llama/Meta-Llama-3-70B-Instruct"
    assert (args.port, args.tensor_parallel_size, args.distributed_executor_backend) == (
        80,
        4,
        "mp",
    )
    assert (args.max_model_len, args.max_num_seqs, args.max_num_batched_tokens) == (4096, 32, 2048)
    assert (args.gpu_memory_utilization, args.block_size, args.dtype) == (0.85, 32, "bfloat16")
    assert (args.enable_prefix_caching, args.max_queue_len, args.seed) == (False, 100, 7)
    assert args.kv_cache_memory == str(
        2 * 2**30
    )  # bytes: the engine reads 2GiB, not Kubernetes' 2Gi
    assert args.kv_cache_dtype == "bfloat16"
    assert args.served_model_name == ["m"] and args.device == "cuda"
    # port 80 as a non-root user: the pod lowers the unprivileged port floor to it
    pod = children["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}
    ]
    assert container["ports"] == [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    assert args.api_key is None  # never a flag: it would show in `ps` and in the pod spec


def test_an_unset_kv_cache_dtype_is_left_to_the_server():
    # no flag at all, so the server's own default (auto: the model's dtype) applies
    _, children = build(engine={"maxNumSeqs": 8})
    args = server(children)["args"]
    assert "--kv-cache-dtype" not in args
    assert build_parser().parse_args(args).kv_cache_dtype == "auto"


def test_secrets_reach_the_server_as_env_from_secret_refs():
    _, children = build(**VARIANTS["cache+secrets"])
    env = {e["name"]: e for e in server(children)["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["PAGEDSERVE_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "api", "key": "key"}
    assert env["HF_HOME"]["value"] == "/models-cache"


def test_model_cache_pvc_is_mounted_as_the_hf_cache():
    _, children = build(**VARIANTS["cache+secrets"])
    pvc = children["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "llm-model-cache"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert pvc["spec"]["storageClassName"] == "fast"
    pod = children["Deployment"]["spec"]["template"]["spec"]
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache["persistentVolumeClaim"]["claimName"] == "llm-model-cache"
    assert {"name": "model-cache", "mountPath": "/models-cache"} in pod["containers"][0][
        "volumeMounts"
    ]
    # two pods cannot share a ReadWriteOnce volume across nodes: replace, do not surge
    assert children["Deployment"]["spec"]["strategy"]["type"] == "Recreate"


def test_probes_drain_and_scrape_annotations():
    _, children = build(startupTimeoutSeconds=7200, shutdownTimeoutSeconds=60)
    template = children["Deployment"]["spec"]["template"]
    container = template["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 7200
    assert children["Deployment"]["spec"]["progressDeadlineSeconds"] > 7200
    args = container["args"]
    assert args[args.index("--shutdown-timeout") + 1] == "60"
    prestop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert template["spec"]["terminationGracePeriodSeconds"] > prestop + 60
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }


def test_service_selects_the_pods_and_children_are_owned():
    body, children = build(**VARIANTS["autoscaling+pdb"])
    deployment, service = children["Deployment"], children["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    for selector in (
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"],
        children["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert strip_none(selector).items() <= pod_labels.items()  # None: a key a patch removes
    for child in filter(None, children.values()):
        assert child["metadata"]["namespace"] == "serving"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "pagedserve"
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == "llm"
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "LLMDeployment",
            "llm",
            "0b7c2f4e-uid",
            True,
        )


def test_hpa_scales_the_llmdeployment_on_waiting_requests():
    _, children = build(**VARIANTS["autoscaling+pdb"])
    hpa = children["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "pagedserve.io/v1alpha1",
        "kind": "LLMDeployment",
        "name": "llm",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "pagedserve:num_requests_waiting"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "3"}


def test_bundled_model_runs_serve_without_a_model_argument():
    _, children = build(model="stories260K", accelerator="cpu")
    args = build_parser().parse_args(server(children)["args"])
    assert args.model_tag is None and args.model is None  # the server's default: the bundled model
