"""The LLMDeployment spec as dataclasses, parsed and checked.

The CRD's OpenAPI schema rejects most bad values before they reach us, but the operator checks
again: a cluster may run without the schema, and some rules (a cache size that parses, a GPU
limit that agrees with tensorParallelSize) are beyond what the schema can say. The defaults
here equal the CRD's (a test holds them together).
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pagedserve.operator.ecosystem_spec import (
    AutoscalingSpec,
    InferencePoolSpec,
    parse_autoscaling,
    parse_inference_pool,
)
from pagedserve.operator.fields import SpecError, choice, get, integer, only
from pagedserve.operator.quantity import parse_quantity

# accelerator -> the extended resource its device plugin advertises (None: plain CPU pods)
GPU_RESOURCE = {"amd": "amd.com/gpu", "nvidia": "nvidia.com/gpu", "cpu": None}
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")
# --kv-cache-dtype's choices, as the engine accepts them (engine/config.py's KV_CACHE_DTYPES,
# not imported: the operator imports nothing of the engine; a test holds the two together)
KV_CACHE_DTYPES = ("auto", "bfloat16")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod")
# env vars the operator sets itself; a user's env entry may not shadow them
RESERVED_ENV = ("HF_HOME", "HF_TOKEN", "PAGEDSERVE_API_KEY")
# flags the operator renders from other fields; extraArgs may not repeat them
OWNED_FLAGS = (
    "--port",
    "--host",
    "--tensor-parallel-size",
    "-tp",
    "--distributed-executor-backend",
    "--device",
    "--api-key",
    "--model",
    "--shutdown-timeout",
    "--pipeline-parallel-size",
    "-pp",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
    "--headless",
)
# spec.engine's fields and the server flags they render to (operator/pod.py); extraArgs may
# set one of these only while its field is unset, or the pod would get both and the last win
ENGINE_FLAGS = {
    "dtype": "--dtype",
    "maxModelLen": "--max-model-len",
    "maxNumSeqs": "--max-num-seqs",
    "maxNumBatchedTokens": "--max-num-batched-tokens",
    "blockSize": "--block-size",
    "gpuMemoryUtilization": "--gpu-memory-utilization",
    "maxQueueLen": "--max-queue-len",
    "kvCacheMemory": "--kv-cache-memory",
    "kvCacheDtype": "--kv-cache-dtype",
}
PREFIX_CACHING_FLAGS = ("--enable-prefix-caching", "--no-enable-prefix-caching")


@dataclass(slots=True)
class SecretRef:
    name: str
    key: str


@dataclass(slots=True)
class EngineSpec:
    """Engine flags; None leaves the server's own default."""

    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    block_size: int | None = None
    dtype: str | None = None
    enable_prefix_caching: bool | None = None
    max_queue_len: int | None = None
    kv_cache_memory: int | None = None  # bytes
    kv_cache_dtype: str | None = None
    extra_args: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CacheSpec:
    size: str | None = None
    storage_class_name: str | None = None
    existing_claim: str | None = None
    access_mode: str = "ReadWriteOnce"


@dataclass(slots=True)
class LLMDeploymentSpec:
    model: str
    served_model_name: str | None = None
    replicas: int = 1
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpus_per_node: int | None = None  # None: every rank in one pod, whatever the node has
    accelerator: str = "amd"
    image: str | None = None
    engine: EngineSpec = field(default_factory=EngineSpec)
    model_cache: CacheSpec | None = None
    hf_token_secret: SecretRef | None = None
    api_key_secret: SecretRef | None = None
    resources: dict = field(default_factory=dict)
    node_selector: dict | None = None
    tolerations: list | None = None
    affinity: dict | None = None
    priority_class_name: str | None = None
    env: list = field(default_factory=list)
    service_type: str = "ClusterIP"
    service_port: int = 8000
    autoscaling: AutoscalingSpec | None = None
    inference_pool: InferencePoolSpec | None = None
    pod_disruption_budget: dict | None = None
    startup_timeout_seconds: int = 3600
    shutdown_timeout_seconds: int = 30

    @property
    def gpu_resource(self) -> str | None:
        return GPU_RESOURCE[self.accelerator]

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def nodes(self) -> int:
        """Pods per replica: 1, or the nodes tp x pp ranks fill (a LeaderWorkerSet group)."""
        per_node = self.gpus_per_node or self.world_size
        return max(1, self.world_size // per_node)

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def gpus_per_pod(self) -> int:
        return self.world_size // self.nodes


def _secret(obj: Mapping, key: str) -> SecretRef | None:
    ref = get(obj, key, "spec", dict)
    if ref is None:
        return None
    only(ref, ("name", "key"), f"spec.{key}")
    name, item = get(ref, "name", f"spec.{key}", str), get(ref, "key", f"spec.{key}", str)
    if not name or not item:
        raise SpecError(f"spec.{key} needs both name and key, got {dict(ref)!r}")
    return SecretRef(name, item)


def _engine(obj: Mapping) -> EngineSpec:
    w = "spec.engine"
    only(
        obj,
        (
            "maxModelLen",
            "maxNumSeqs",
            "maxNumBatchedTokens",
            "gpuMemoryUtilization",
            "blockSize",
            "dtype",
            "enablePrefixCaching",
            "maxQueueLen",
            "kvCacheMemory",
            "kvCacheDtype",
            "extraArgs",
        ),
        w,
    )
    util = get(obj, "gpuMemoryUtilization", w, (int, float))
    if util is not None and not 0 < util <= 1:
        raise SpecError(f"{w}.gpuMemoryUtilization must be in (0, 1], got {util}")
    kv = get(obj, "kvCacheMemory", w, (str, int))
    try:
        kv = None if kv is None else int(parse_quantity(kv))
    except ValueError as exc:
        raise SpecError(f"{w}.kvCacheMemory: {exc}") from None
    if kv is not None and kv <= 0:
        raise SpecError(f"{w}.kvCacheMemory must be positive, got {obj['kvCacheMemory']!r}")
    return EngineSpec(
        max_model_len=integer(obj, "maxModelLen", w, minimum=1),
        max_num_seqs=integer(obj, "maxNumSeqs", w, minimum=1),
        max_num_batched_tokens=integer(obj, "maxNumBatchedTokens", w, minimum=1),
        gpu_memory_utilization=util,
        block_size=integer(obj, "blockSize", w, minimum=1),
        dtype=choice(obj, "dtype", w, DTYPES, None),
        enable_prefix_caching=get(obj, "enablePrefixCaching", w, bool),
        max_queue_len=integer(obj, "maxQueueLen", w, minimum=0),
        kv_cache_memory=kv,
        kv_cache_dtype=choice(obj, "kvCacheDtype", w, KV_CACHE_DTYPES, None),
        extra_args=_extra_args(obj, w),
    )


def _flag(arg: str) -> str:
    """--max-model-len=4096 -> --max-model-len: the flag an extraArgs entry sets."""
    return arg.split("=", 1)[0]


def _extra_args(obj: Mapping, w: str) -> list[str]:
    extra = get(obj, "extraArgs", w, list, [])
    for arg in extra:
        if not isinstance(arg, str):
            raise SpecError(f"{w}.extraArgs must be a list of strings, got {arg!r}")
        flag = _flag(arg)
        if flag in OWNED_FLAGS:
            raise SpecError(
                f"{w}.extraArgs may not set {flag}: the operator sets it "
                "(use tensorParallelSize, accelerator, apiKeySecret, service.port or "
                "shutdownTimeoutSeconds)"
            )
    return list(extra)


def _cache(obj: Mapping) -> CacheSpec:
    w = "spec.modelCache"
    only(obj, ("size", "storageClassName", "existingClaim", "accessMode"), w)
    size = get(obj, "size", w, (str, int))
    claim = get(obj, "existingClaim", w, str)
    if size is None and claim is None:
        raise SpecError(f"{w} needs size (a new PVC) or existingClaim (a PVC that exists)")
    if size is not None:
        try:
            if parse_quantity(size) <= 0:
                raise ValueError(f"{size!r} is not positive")
        except ValueError as exc:
            raise SpecError(f"{w}.size: {exc}") from None
    return CacheSpec(
        size=None if size is None else str(size),
        storage_class_name=get(obj, "storageClassName", w, str),
        existing_claim=claim,
        access_mode=choice(obj, "accessMode", w, ACCESS_MODES, "ReadWriteOnce"),
    )


def _resources(obj: Mapping, accelerator: str, gpus: int) -> dict:
    only(obj, ("limits", "requests", "claims"), "spec.resources")
    for part in ("limits", "requests"):
        for name, value in (get(obj, part, "spec.resources", dict, {})).items():
            try:
                parse_quantity(value)
            except ValueError as exc:
                raise SpecError(f"spec.resources.{part}[{name!r}]: {exc}") from None
    gpu = GPU_RESOURCE[accelerator]
    for part in ("limits", "requests"):
        given = (obj.get(part) or {}).get(gpu) if gpu else None
        if given is not None and parse_quantity(given) != gpus:
            raise SpecError(
                f"spec.resources.{part}[{gpu!r}] is {given} but each pod runs {gpus} ranks "
                "(tensorParallelSize x pipelineParallelSize, over gpusPerNode): each pod gets "
                "one GPU per rank, leave the GPU count to the operator"
            )
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in obj.items()}


def _env(items: list) -> list:
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise SpecError(f"spec.env entries must be objects with a name, got {item!r}")
        if item["name"] in RESERVED_ENV:
            raise SpecError(
                f"spec.env may not set {item['name']}: the operator sets it "
                "(from modelCache, hfTokenSecret or apiKeySecret)"
            )
    return [dict(item) for item in items]


def _pdb(obj: Mapping) -> dict:
    only(obj, ("minAvailable", "maxUnavailable"), "spec.podDisruptionBudget")
    given = {k: v for k, v in obj.items() if v is not None}
    if len(given) != 1:
        raise SpecError(
            "spec.podDisruptionBudget needs exactly one of minAvailable and maxUnavailable"
        )
    ((key, value),) = given.items()
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0) and not (
        isinstance(value, str) and value.endswith("%") and value[:-1].isdigit()
    ):
        raise SpecError(
            f"spec.podDisruptionBudget.{key} must be a count or a percentage like '50%', "
            f"got {value!r}"
        )
    return given


SPEC_FIELDS = (
    "model",
    "servedModelName",
    "replicas",
    "tensorParallelSize",
    "pipelineParallelSize",
    "gpusPerNode",
    "accelerator",
    "image",
    "engine",
    "modelCache",
    "hfTokenSecret",
    "apiKeySecret",
    "resources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "priorityClassName",
    "env",
    "service",
    "autoscaling",
    "inferencePool",
    "podDisruptionBudget",
    "startupTimeoutSeconds",
    "shutdownTimeoutSeconds",
)
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def _layout(spec: Mapping) -> tuple[int, int, int | None]:
    """(tp, pp, gpusPerNode); SpecError unless the ranks fill one pod or whole nodes."""
    tp = integer(spec, "tensorParallelSize", "spec", 1, minimum=1)
    pp = integer(spec, "pipelineParallelSize", "spec", 1, minimum=1)
    per_node = integer(spec, "gpusPerNode", "spec", None, minimum=1)
    world = tp * pp
    if per_node is not None and world > per_node and world % per_node:
        raise SpecError(
            f"spec.tensorParallelSize x spec.pipelineParallelSize = {tp} x {pp} = {world} "
            f"ranks do not fill whole nodes of spec.gpusPerNode={per_node}: make it a "
            "multiple of gpusPerNode (one pod per node, one GPU per rank)"
        )
    return tp, pp, per_node


def _check_multi_node(spec: LLMDeploymentSpec) -> None:
    """What a LeaderWorkerSet cannot do the way a Deployment does, refused by name."""
    if not spec.multi_node:
        return
    cache = spec.model_cache
    if cache is not None and cache.size is not None and cache.access_mode != "ReadWriteMany":
        raise SpecError(
            f"spec.modelCache.accessMode {cache.access_mode} with a multi-node spec: the "
            "group's pods run on several nodes, which only a ReadWriteMany claim allows"
        )
    pdb = spec.pod_disruption_budget or {}
    if "minAvailable" in pdb or isinstance(pdb.get("maxUnavailable"), str):
        raise SpecError(
            "spec.podDisruptionBudget with a multi-node spec (tensorParallelSize x "
            "pipelineParallelSize > gpusPerNode) takes only maxUnavailable as a count: "
            "it counts pods, and one pod down takes its whole group down"
        )


def check_name(name: object) -> str:
    """metadata.name, which every child is named after; SpecError unless it is a DNS label."""
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        raise SpecError(
            f"metadata.name {name!r} must be a DNS label (lowercase letters, digits, '-', "
            "at most 63, starting with a letter): the Service is named after it"
        )
    return name


def _service(spec: Mapping) -> tuple[str, int]:
    service = get(spec, "service", "spec", dict, {})
    only(service, ("type", "port"), "spec.service")
    port = integer(service, "port", "spec.service", 8000, minimum=1)
    if port > 65535:
        raise SpecError(f"spec.service.port must be <= 65535, got {port}")
    return choice(service, "type", "spec.service", SERVICE_TYPES, "ClusterIP"), port


def _node_selector(spec: Mapping) -> dict | None:
    node_selector = get(spec, "nodeSelector", "spec", dict)
    if node_selector and not all(isinstance(v, str) for v in node_selector.values()):
        raise SpecError(f"spec.nodeSelector values must be strings, got {dict(node_selector)!r}")
    return dict(node_selector) if node_selector else None


def _optional_blocks(spec: Mapping) -> dict:
    """modelCache, autoscaling and podDisruptionBudget: None when absent."""
    blocks = (("modelCache", "model_cache", _cache), ("autoscaling", "autoscaling",
              parse_autoscaling), ("podDisruptionBudget", "pod_disruption_budget", _pdb))
    return {field: None if spec.get(key) is None else parse(get(spec, key, "spec", dict))
            for key, field, parse in blocks}


def parse_spec(spec: Mapping | None) -> LLMDeploymentSpec:
    """The typed spec, defaults filled in; SpecError naming the first bad field."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec must be an object, got {spec!r}")
    w = "spec"
    only(spec, SPEC_FIELDS, w)
    model = get(spec, "model", w, str)
    if not model or not model.strip():
        raise SpecError("spec.model is required: a Hugging Face hub id or a path inside the pod")
    accelerator = choice(spec, "accelerator", w, tuple(GPU_RESOURCE), "amd")
    tp, pp, per_node = _layout(spec)
    service_type, port = _service(spec)
    node_selector = _node_selector(spec)
    parsed = LLMDeploymentSpec(
        model=model.strip(),
        served_model_name=get(spec, "servedModelName", w, str),
        replicas=integer(spec, "replicas", w, 1, minimum=0),
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        gpus_per_node=per_node,
        accelerator=accelerator,
        image=get(spec, "image", w, str),
        engine=_engine(get(spec, "engine", w, dict, {})),
        hf_token_secret=_secret(spec, "hfTokenSecret"),
        api_key_secret=_secret(spec, "apiKeySecret"),
        resources=_resources(
            get(spec, "resources", w, dict, {}), accelerator, min(tp * pp, per_node or tp * pp)
        ),
        node_selector=node_selector,
        tolerations=list(get(spec, "tolerations", w, list, [])) or None,
        affinity=dict(get(spec, "affinity", w, dict, {})) or None,
        priority_class_name=get(spec, "priorityClassName", w, str),
        env=_env(get(spec, "env", w, list, [])),
        service_type=service_type,
        service_port=port,
        inference_pool=parse_inference_pool(get(spec, "inferencePool", w, dict, {})),
        startup_timeout_seconds=integer(spec, "startupTimeoutSeconds", w, 3600, minimum=10),
        shutdown_timeout_seconds=integer(spec, "shutdownTimeoutSeconds", w, 30, minimum=0),
        **_optional_blocks(spec),
    )
    _check_multi_node(parsed)
    _check_extra_args(parsed)
    return parsed


def engine_attr(name: str) -> str:
    """maxModelLen -> max_model_len: the EngineSpec attribute of a spec.engine field."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _check_extra_args(spec: LLMDeploymentSpec) -> None:
    """An extraArgs flag that a set field renders too would reach the pod twice, and the last
    would silently win."""
    e = spec.engine
    owners = {flag: (f"spec.engine.{name}", getattr(e, engine_attr(name)))
              for name, flag in ENGINE_FLAGS.items()}
    owners.update(dict.fromkeys(PREFIX_CACHING_FLAGS,
                                ("spec.engine.enablePrefixCaching", e.enable_prefix_caching)))
    owners["--served-model-name"] = ("spec.servedModelName", spec.served_model_name or None)
    for arg in e.extra_args:
        flag = _flag(arg)
        field, value = owners.get(flag, ("", None))
        if value is not None:
            raise SpecError(f"spec.engine.extraArgs sets {flag} and {field} sets it too: keep one")
