"""Helpers for the chart tests: render charts/pagedserve offline with Helm's own Go code
(helm_python) and validate what comes out."""

import copy
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pagedserve"
LLMD_CRD = CHART / "crds" / "llmdeployments.yaml"
RELEASE, NAMESPACE = "ps", "pagedserve-system"
KUBE_VERSIONS = ["1.30", "1.37"]

# Value sets the tests render; each is something an admin would plausibly install with.
VALUE_SETS = {
    "default": {},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"], "logLevel": "debug"}},
    "standalone": {"operator": {"peering": {"enabled": False}}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
        }
    },
    "seed-models": {
        "models": [
            {"model": "Qwen/Qwen2-7B-Instruct", "tensorParallelSize": 1},
            {"model": "01-ai/Yi-34B-Chat", "tensorParallelSize": 4},
            {
                "name": "llama3-70b",
                "namespace": "llm",
                "model": "meta-llama/Meta-Llama-3-70B-Instruct",
                "tensorParallelSize": 4,
                "modelCache": {"size": "200Gi"},
            },
        ]
    },
    "gateway-keda": {
        "models": [
            {
                "name": "chat",
                "model": "Qwen/Qwen2-7B-Instruct",
                "inferencePool": {"enabled": True},
                "autoscaling": {
                    "engine": "keda",
                    "prometheusAddress": "http://prometheus.monitoring:9090",
                    "maxReplicas": 3,
                },
            },
        ]
    },
    "custom": {
        "fullnameOverride": "llm-operator",
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "engine": {"images": {"amd": "registry.example/pagedserve:dev-rocm"}},
        "operator": {
            "image": {"repository": "registry.example/op", "tag": "dev"},
            "imagePullSecrets": [{"name": "regcred"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "priorityClassName": "system-cluster-critical",
        },
    },
}


def pytest_generate_tests(metafunc):
    # value sets and Kubernetes versions are parameters any chart test can ask for by name
    if "value_set" in metafunc.fixturenames:
        metafunc.parametrize("value_set", list(VALUE_SETS))
    if "kube_version" in metafunc.fixturenames:
        metafunc.parametrize("kube_version", KUBE_VERSIONS)


class ChartUnderTest:
    """charts/pagedserve loaded once; renders value sets and picks manifests apart."""

    def __init__(self, loaded: helm.Chart):
        self.loaded = loaded

    def render_raw(self, values: dict | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
        return self.loaded.render(copy.deepcopy(values or {}), name=RELEASE, namespace=namespace)

    def render(self, values: dict | None = None, namespace: str = NAMESPACE) -> list[dict]:
        """Every manifest the chart renders (NOTES.txt and empty documents left out)."""
        docs = []
        for path, text in sorted(self.render_raw(values, namespace).items()):
            if not path.endswith("NOTES.txt"):
                docs += [d for d in yaml.safe_load_all(text) if d]
        return docs

    def notes(self, values: dict | None = None) -> str:
        return next(t for p, t in self.render_raw(values).items() if p.endswith("NOTES.txt"))

    def crds(self) -> dict[str, dict]:
        """CRDs shipped under crds/, by kind."""
        out = {}
        for entry in self.loaded.crds:
            for doc in yaml.safe_load_all(entry["data"]):
                if doc:
                    out[doc["spec"]["names"]["kind"]] = doc
        return out

    @staticmethod
    def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
        return [
            d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
        ]

    @classmethod
    def operator_container(cls, docs: list[dict]) -> dict:
        (dep,) = cls.find(docs, "Deployment")
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        return container

    @staticmethod
    def value_set(name: str) -> dict:
        return copy.deepcopy(VALUE_SETS[name])

    def validate_custom_resource(self, doc: dict) -> None:
        """Check a custom resource against its CRD (from crds/) strictly, as the apiserver
        would with kubectl --validate=strict. LookupError when the chart has no such CRD."""
        crd = self.crds().get(doc["kind"])
        if crd is None:
            raise LookupError(f"no CRD for {doc['kind']} under {CHART / 'crds'}")
        group, version = doc["apiVersion"].split("/")
        assert crd["spec"]["group"] == group, doc["apiVersion"]
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
        schema = _strict(served["schema"]["openAPIV3Schema"])
        # metadata is checked by the apiserver itself, not by the CRD schema
        schema.setdefault("properties", {}).update(
            apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"}
        )
        jsonschema.Draft7Validator(schema).validate(doc)
        namespaced = crd["spec"]["scope"] == "Namespaced"
        assert bool(doc["metadata"].get("namespace")) == namespaced, doc["metadata"]


def _strict(schema: dict) -> dict:
    """Unknown fields are errors unless the structural schema preserves them."""
    schema = dict(schema)
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    if "properties" in schema:
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    return schema


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(str(CHART)) as loaded:
        yield ChartUnderTest(loaded)
