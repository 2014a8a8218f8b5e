"""What each value does to the rendered chart, and that wrong values fail with a clear message."""

import helm_python as helm
import pytest


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"operator": {"logLevel": "loud"}},
            "at '/operator/logLevel': value must be one of 'debug', 'info', 'warning', 'error'",
        ),
        (
            {"operator": {"watchNamespace": ["a"]}},
            "at '/operator': additional properties 'watchNamespace' not allowed",
        ),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "at '/operator/watchNamespaces/0'"),
        (
            {"models": [{"model": "Qwen/Qwen2-7B-Instruct", "tensorParallelSize": 0}]},
            "at '/models/0/tensorParallelSize': minimum: got 0, want 1",
        ),
        (
            {"models": [{"model": "x", "accelerator": "tpu"}]},
            "at '/models/0/accelerator': value must be one of 'amd', 'nvidia', 'cpu'",
        ),
        ({"models": [{"tensorParallelSize": 4}]}, "at '/models/0': missing property 'model'"),
        (
            {"models": [{"model": "x", "autoscaling": {"engine": "kpa", "maxReplicas": 2}}]},
            "at '/models/0/autoscaling/engine': value must be one of 'hpa', 'keda'",
        ),
        (
            {
                "models": [
                    {
                        "model": "x",
                        "inferencePool": {"enabled": True, "endpointPickerRef": {"port": 9002}},
                    }
                ]
            },
            "at '/models/0/inferencePool/endpointPickerRef/port': got number, want object",
        ),
        (
            {"metrics": {"serviceMonitor": {"enabled": "yes"}}},
            "at '/metrics/serviceMonitor/enabled': got string, want boolean",
        ),
        (
            {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
            "at '/metrics/serviceMonitor/interval'",
        ),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(chart, values, message):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.render(values)
    assert message in str(err.value)


def test_set_models_creates_an_llmdeployment(chart):
    # exactly what `helm install ... --set models[0].model=Qwen/Qwen2-7B-Instruct` passes
    values = helm.parse_set_string(
        "models[0].model=Qwen/Qwen2-7B-Instruct,models[0].tensorParallelSize=1"
    )
    (llmd,) = chart.find(chart.render(values), "LLMDeployment")
    assert llmd["apiVersion"] == "pagedserve.io/v1alpha1"
    assert llmd["metadata"]["name"] == "qwen2-7b-instruct"
    assert llmd["metadata"]["namespace"] == "pagedserve-system"
    assert llmd["spec"] == {"model": "Qwen/Qwen2-7B-Instruct", "tensorParallelSize": 1}


def test_seed_models_keep_their_spec_name_and_namespace(chart):
    docs = chart.find(chart.render(chart.value_set("seed-models")), "LLMDeployment")
    got = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"] for d in docs}
    assert got == {
        ("pagedserve-system", "qwen2-7b-instruct"): {
            "model": "Qwen/Qwen2-7B-Instruct",
            "tensorParallelSize": 1,
        },
        ("pagedserve-system", "yi-34b-chat"): {
            "model": "01-ai/Yi-34B-Chat",
            "tensorParallelSize": 4,
        },
        ("llm", "llama3-70b"): {
            "model": "meta-llama/Meta-Llama-3-70B-Instruct",
            "tensorParallelSize": 4,
            "modelCache": {"size": "200Gi"},
        },
    }


@pytest.mark.parametrize(
    "model, name",
    [
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2-5-7b-instruct"),
        ("/models/My_Model", "my-model"),
        ("org/" + "x" * 80, "x" * 63),
    ],
)
def test_model_names_become_dns_labels(chart, model, name):
    (llmd,) = chart.find(chart.render({"models": [{"model": model}]}), "LLMDeployment")
    assert llmd["metadata"]["name"] == name


def test_two_models_with_one_name_fail_clearly(chart):
    with pytest.raises(
        helm.HelmRenderError,
        match=r"models\[1\]: LLMDeployment pagedserve-system/chat is listed twice",
    ):
        chart.render({"models": [{"model": "a/chat"}, {"model": "b/chat"}]})


def test_cluster_wide_operator_gets_a_cluster_role(chart):
    docs = chart.render({})
    assert chart.find(docs, "Role") == [] and chart.find(docs, "RoleBinding") == []
    (role,) = chart.find(docs, "ClusterRole")
    (binding,) = chart.find(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"llmdeployments", "deployments", "services"} <= resources


def test_namespaced_operator_gets_a_role_per_watched_namespace(chart):
    docs = chart.render(chart.value_set("namespaced"))
    roles = {r["metadata"]["namespace"]: r for r in chart.find(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in chart.find(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for ns, binding in bindings.items():
        assert binding["roleRef"]["name"] == roles[ns]["metadata"]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "ps-pagedserve", "namespace": "pagedserve-system"}
        ]
    # nothing namespaced is granted cluster-wide
    cluster = [r for role in chart.find(docs, "ClusterRole") for r in role["rules"]]
    assert not {"llmdeployments", "deployments", "secrets"} & {
        res for r in cluster for res in r["resources"]
    }


def test_rbac_can_be_left_to_the_admin(chart):
    docs = chart.render({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & {
        d["kind"] for d in docs
    }


def test_peering_object_matches_the_operator_arguments(chart):
    docs = chart.render({})
    args = chart.operator_container(docs)["args"]
    (peering,) = chart.find(docs, "ClusterKopfPeering")
    assert args[args.index("--peering") + 1] == peering["metadata"]["name"] == "pagedserve"
    namespaced = chart.render(chart.value_set("namespaced"))
    assert {p["metadata"]["namespace"] for p in chart.find(namespaced, "KopfPeering")} == {
        "team-a",
        "team-b",
    }
    assert chart.find(namespaced, "ClusterKopfPeering") == []


def test_standalone_operator_has_no_peering(chart):
    docs = chart.render(chart.value_set("standalone"))
    assert "--standalone" in chart.operator_container(docs)["args"]
    assert not {"ClusterKopfPeering", "KopfPeering"} & {d["kind"] for d in docs}


def test_operator_runs_one_replica_that_is_recreated_not_rolled(chart):
    (dep,) = chart.find(chart.render({}), "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


def test_operator_pod_is_locked_down(chart):
    docs = chart.render({})
    (dep,) = chart.find(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = chart.operator_container(docs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["serviceAccountName"] == "ps-pagedserve"


def test_custom_values_reach_the_operator_pod(chart):
    docs = chart.render(chart.value_set("custom"))
    (dep,) = chart.find(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert dep["metadata"]["name"] == "llm-operator-operator"
    assert pod["serviceAccountName"] == "existing-sa" and chart.find(docs, "ServiceAccount") == []
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["priorityClassName"] == "system-cluster-critical"
    container = chart.operator_container(docs)
    assert container["image"] == "registry.example/op:dev"
    assert {"name": "EXTRA", "value": "1"} in container["env"]


def test_service_account_name_is_required_without_creating_one(chart):
    with pytest.raises(helm.HelmRenderError, match="serviceAccount.name is required"):
        chart.render({"serviceAccount": {"create": False}})


def test_service_monitor_scrapes_the_model_services(chart):
    docs = chart.render(chart.value_set("monitoring"))
    (sm,) = chart.find(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "pagedserve"}}
    assert sm["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    # restricted to the watched namespaces when the operator is
    values = chart.value_set("monitoring") | chart.value_set("namespaced")
    (sm,) = chart.find(chart.render(values), "ServiceMonitor")
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_models_with_a_pool_and_keda_pass_the_crd_and_its_rules(chart):
    from pathlib import Path

    from tests.crds.validate import load, validate

    crd = load(
        Path(__file__).resolve().parents[2]
        / "charts"
        / "pagedserve"
        / "crds"
        / "llmdeployments.yaml"
    )
    (llmd,) = chart.find(chart.render(chart.value_set("gateway-keda")), "LLMDeployment")
    stored = validate(llmd, crd)
    assert stored["spec"]["inferencePool"] == {"enabled": True}
    assert stored["spec"]["autoscaling"]["engine"] == "keda"
