"""The model server's pod template: pure functions of the spec and the operator's config.

Fields the operator owns but may leave unset are rendered as None: the applier strips them
for a create and sends them as JSON null in a merge patch, so removing e.g. a nodeSelector
from the spec removes it from the Deployment too.
"""

import math

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.spec import (
    ENGINE_FLAGS,
    PREFIX_CACHING_FLAGS,
    LLMDeploymentSpec,
    engine_attr,
)

CACHE_PATH = "/models-cache"  # the engine image's HF_HOME
SHM_PATH = "/dev/shm"
BUNDLED_MODEL = "stories260K"  # `serve` with no MODEL runs the model the image bundles
PRESTOP_SECONDS = 5  # time for endpoints to drop the pod before SIGTERM starts the drain
PROBE_PERIOD = 10


def server_args(spec: LLMDeploymentSpec) -> list[str]:
    """`pagedserve` arguments: serve MODEL, the parallel layout, the port, then engine flags."""
    tp, pp = spec.tensor_parallel_size, spec.pipeline_parallel_size
    args = ["serve"] if spec.model == BUNDLED_MODEL else ["serve", spec.model]
    args += ["--port", str(spec.service_port), "--tensor-parallel-size", str(tp)]
    if pp > 1:
        args += ["--pipeline-parallel-size", str(pp)]
    args += [
        "--distributed-executor-backend",
        "mp" if tp * pp > 1 else "uni",
        "--device",
        "cpu" if spec.accelerator == "cpu" else "cuda",
        "--shutdown-timeout",
        str(spec.shutdown_timeout_seconds),
    ]
    if spec.served_model_name:
        args += ["--served-model-name", spec.served_model_name]
    e = spec.engine
    for name, flag in ENGINE_FLAGS.items():
        value = getattr(e, engine_attr(name))
        if value is not None:
            args += [flag, str(value)]
    if e.enable_prefix_caching is not None:
        args.append(PREFIX_CACHING_FLAGS[0 if e.enable_prefix_caching else 1])
    return args + list(e.extra_args)


def _secret_env(name: str, ref) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def server_env(spec: LLMDeploymentSpec) -> list[dict]:
    env = [{"name": "HF_HOME", "value": CACHE_PATH}]
    if spec.hf_token_secret:
        env.append(_secret_env("HF_TOKEN", spec.hf_token_secret))
    if spec.api_key_secret:
        env.append(_secret_env("PAGEDSERVE_API_KEY", spec.api_key_secret))
    return env + spec.env


def _resources(spec: LLMDeploymentSpec) -> dict | None:
    resources = {k: dict(v) if isinstance(v, dict) else v for k, v in spec.resources.items()}
    if spec.gpu_resource:
        resources.setdefault("limits", {})[spec.gpu_resource] = str(spec.gpus_per_pod)
    return resources or None


def _probe(path: str, period: int, failures: int, timeout: int) -> dict:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def container(spec: LLMDeploymentSpec, config: OperatorConfig) -> dict:
    return {
        "name": "server",
        "image": spec.image or config.image(spec.accelerator),
        "command": ["pagedserve"],
        "args": server_args(spec),  # a list, never a shell string: no quoting, no injection
        "env": server_env(spec),
        # the server listens on the Service's port, so the port in args is the one clients use
        "ports": [{"name": "http", "containerPort": spec.service_port, "protocol": "TCP"}],
        "resources": _resources(spec),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": CACHE_PATH},
            {"name": "shm", "mountPath": SHM_PATH},
        ],
        # a first start downloads and loads the weights: allow startupTimeoutSeconds for it
        "startupProbe": _probe(
            "/health", PROBE_PERIOD, math.ceil(spec.startup_timeout_seconds / PROBE_PERIOD), 5
        ),
        "readinessProbe": _probe("/health", 5, 3, 5),
        "livenessProbe": _probe("/health", 15, 4, 10),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _security_context(spec: LLMDeploymentSpec, config: OperatorConfig) -> dict:
    ctx: dict = {"seccompProfile": {"type": "RuntimeDefault"}}
    if config.run_as_user:
        # the engine image's user is in group 0, which also owns the cache volume (fsGroup)
        ctx.update(runAsNonRoot=True, runAsUser=int(config.run_as_user), runAsGroup=0, fsGroup=0)
    if spec.service_port < 1024:  # let the non-root server bind it: a sysctl every kubelet allows
        ctx["sysctls"] = [
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": str(spec.service_port)}
        ]
    if spec.accelerator == "amd" and config.gpu_group_ids:
        ctx["supplementalGroups"] = config.gpu_group_ids  # video and render own /dev/kfd, /dev/dri
    return ctx


def _cache_volume(spec: LLMDeploymentSpec, claim_name: str | None) -> dict:
    if claim_name:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim_name}}
    return {"name": "model-cache", "emptyDir": {}}


def pod_template(
    spec: LLMDeploymentSpec, config: OperatorConfig, labels: dict, claim_name: str | None
) -> dict:
    """The Deployment's pod template; claim_name is the model-cache PVC, if any."""
    return {
        "metadata": {
            "labels": dict(labels),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(spec.service_port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "containers": [container(spec, config)],
            "volumes": [
                _cache_volume(spec, claim_name),
                # the seed's --ipc=host: tensor-parallel workers exchange tensors through /dev/shm
                {"name": "shm", "emptyDir": {"medium": "Memory"}},
            ],
            "securityContext": _security_context(spec, config),
            # the drain: preStop, then SIGTERM and --shutdown-timeout, plus a margin to exit
            "terminationGracePeriodSeconds": PRESTOP_SECONDS + spec.shutdown_timeout_seconds + 15,
            "enableServiceLinks": False,
            "nodeSelector": spec.node_selector,
            "tolerations": spec.tolerations,
            "affinity": spec.affinity,
            "priorityClassName": spec.priority_class_name,
        },
    }
