"""What the operator writes is safe: secret values never leave their Secret (pods get them
through secretKeyRef only), the model server runs unprivileged on every accelerator (ROCm gets
its device groups, not privileges), and the chart's RBAC names every verb and resource."""

import base64
import itertools
import json
from pathlib import Path

import pytest

from pagedserve.operator import rbac
from pagedserve.operator.apply import strip_none
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.manifests import desired_children
from pagedserve.operator.spec import parse_spec
from tests.kube_emulator import (
    OPERATOR_AGENTS,
    condition,
    diverged,
    llmdeployment,
    running_operator,
    wait_for,
)

CONFIG = OperatorConfig.from_env({})
CHART = Path(__file__).resolve().parents[2] / "charts" / "pagedserve"
SECRETS = {
    "hfTokenSecret": {"name": "hf", "key": "token"},
    "apiKeySecret": {"name": "api", "key": "key"},
}
VARIANTS = {
    "plain": {},
    "secrets": SECRETS,
    "everything": {
        **SECRETS,
        "modelCache": {"size": "200Gi"},
        "autoscaling": {"maxReplicas": 3},
        "podDisruptionBudget": {"maxUnavailable": 1},
        "service": {"type": "LoadBalancer", "port": 80},
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "engine": {"extraArgs": ["--seed", "7"]},
        "resources": {"limits": {"memory": "64Gi"}},
        "servedModelName": "m",
    },
}
MATRIX = list(itertools.product(["amd", "nvidia", "cpu"], [1, 4, 8], VARIANTS))
CREDENTIALS = {"HF_TOKEN": "hfTokenSecret", "PAGEDSERVE_API_KEY": "apiKeySecret"}


def pod_of(accelerator: str, tp: int, variant: str) -> tuple[dict, dict]:
    """(the spec, the Deployment's pod spec) the operator builds for it."""
    spec = {
        "model": "meta-llama/Meta-Llama-3-70B-Instruct",
        "accelerator": accelerator,
        "tensorParallelSize": tp,
        **VARIANTS[variant],
    }
    owner = {
        "apiVersion": "pagedserve.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "llm", "namespace": "serving", "uid": "uid-1", "generation": 1},
        "spec": spec,
    }
    children = desired_children(owner, parse_spec(spec), CONFIG)
    return spec, strip_none(children["Deployment"]["spec"]["template"]["spec"])


@pytest.mark.parametrize("accelerator, tp, variant", MATRIX)
def test_credentials_reach_the_pod_only_as_secret_refs(accelerator, tp, variant):
    spec, pod = pod_of(accelerator, tp, variant)
    (container,) = pod["containers"]
    assert "envFrom" not in container  # no whole Secret poured into the environment
    user_env = {e["name"] for e in spec.get("env", [])}
    for env in container["env"]:
        if env["name"] in CREDENTIALS:
            assert set(env) == {"name", "valueFrom"}
            assert env["valueFrom"] == {"secretKeyRef": spec[CREDENTIALS[env["name"]]]}
        else:  # literal values are the operator's own settings or the user's env
            assert env["name"] in user_env | {"HF_HOME"}, env
    asked = {name for name, field in CREDENTIALS.items() if field in spec}
    assert {e["name"] for e in container["env"]} & set(CREDENTIALS) == asked
    assert not [
        a for a in container["args"] if "key" in a.lower() or "token" in a.lower()
    ]  # `ps` shows args


@pytest.mark.parametrize("accelerator, tp, variant", MATRIX)
def test_the_server_runs_unprivileged(accelerator, tp, variant):
    _, pod = pod_of(accelerator, tp, variant)
    (container,) = pod["containers"]
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}  # nothing added back, not even for ROCm
    assert not ctx.get("privileged")
    pod_ctx = pod["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] > 0
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
    assert all("hostPath" not in v for v in pod["volumes"])  # devices come from the device plugin
    if accelerator == "amd":  # /dev/kfd and /dev/dri belong to the video and render groups
        assert pod_ctx["supplementalGroups"] == CONFIG.gpu_group_ids
        assert container["resources"]["limits"]["amd.com/gpu"] == str(tp)
    else:
        assert "supplementalGroups" not in pod_ctx


def secret(name: str, key: str, value: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "data": {key: base64.b64encode(value.encode()).decode()},
    }


def test_secret_values_never_leave_the_secret(cluster, monkeypatch, ns):
    values = {"hf": "hf_sentinelTOKEN3b9f0e", "api": "sk-sentinelKEY77c1d2"}
    forms = [form for v in values.values() for form in (v, base64.b64encode(v.encode()).decode())]
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    monkeypatch.setenv("PAGEDSERVE_RESYNC_INTERVAL", "1")
    config = OperatorConfig.from_env()
    cluster.kube.create("Secret", ns, secret("hf", "token", values["hf"]))
    cluster.kube.create("Secret", ns, secret("api", "key", values["api"]))
    specs = {
        "rocm": dict(accelerator="amd", tensorParallelSize=4, **SECRETS),
        "cuda": dict(accelerator="nvidia", tensorParallelSize=8, **VARIANTS["everything"]),
        "cpu": dict(accelerator="cpu", apiKeySecret=SECRETS["apiKeySecret"]),
    }
    mark = len(cluster.requests())
    with running_operator(
        cluster, namespaces=(ns,), debug=True
    ) as runner:  # debug: kopf logs its patches
        for name, spec in specs.items():
            cluster.kube.create("LLMDeployment", ns, llmdeployment(name, ns, **spec))
        cluster.kube.create(
            "LLMDeployment",
            ns,
            llmdeployment("wrongkey", ns, hfTokenSecret={"name": "hf", "key": "nope"}),
        )
        for name in specs:
            wait_for(
                lambda name=name: not diverged(cluster.kube, config, ns, name),
                what=f"{name}'s children",
            )
        wait_for(
            lambda: (
                condition(cluster.kube.get("LLMDeployment", ns, "wrongkey"), "Ready").get("reason")
                == "SecretKeyNotFound"
            ),
            what="the missing key reported",
        )
    mine = [
        r
        for r in cluster.requests()[mark:]
        if r.headers.get("User-Agent", "").startswith(OPERATOR_AGENTS)
    ]
    assert any(
        r.method == "GET" and r.url.path.endswith("/secrets/hf") for r in mine
    )  # it had the values at hand
    sent = b"\n".join(r.body for r in mine)
    stored = json.dumps(
        [
            cluster.objects(kind, ns)
            for kind in (
                "LLMDeployment",
                "Deployment",
                "Service",
                "Event",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "PersistentVolumeClaim",
            )
        ]
    )
    for form in forms:
        assert form.encode() not in sent, "a secret value in a request the operator sent"
        assert form not in stored, "a secret value in an object the operator wrote"
        assert form not in runner.output, "a secret value in the operator's log"
    assert "SecretKeyNotFound" in stored  # the Event and status name the key, not the value
    print(
        f"\nsecret values searched (plain and base64) in {len(mine)} operator requests "
        f"({len(sent)} body bytes), {len(stored)} bytes of stored objects, "
        f"{len(runner.output.splitlines())} log lines: none found"
    )


def chart_rules(values: dict) -> list[dict]:
    helm = pytest.importorskip("helm_python")
    import yaml

    with helm.Chart.load(str(CHART)) as loaded:
        rendered = loaded.render(values, name="ps", namespace="pagedserve-system")
    docs = [
        d
        for path, text in rendered.items()
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    return [rule for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"operator": {"watchNamespaces": ["team-a"]}},
        {"operator": {"peering": {"enabled": False}}},
    ],
    ids=["cluster-wide", "namespaced", "standalone"],
)
def test_chart_rbac_has_no_wildcards_and_reads_secrets_only_by_name(values):
    rules = chart_rules(values)
    assert rules
    for rule in rules:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field] and not any("*" in item for item in rule[field]), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        if "secrets" in rule["resources"]:  # checked to exist by name, never listed or watched
            assert rule["verbs"] == ["get"], rule
    # the operator's own list, which the chart copies, says the same
    assert not [r for r in rbac.NAMESPACED + rbac.CLUSTER if "*" in (r.group, r.resource, *r.verbs)]
