"""Fixtures for the operator's tests.

`cluster` is tests.kube_emulator.EmulatedCluster: kmock's Kubernetes emulator with its
gaps filled (201 on create; uid, resourceVersion, creationTimestamp, generation stamped; lists
with kind/apiVersion; the LLMDeployment resource declared from the chart's CRD, InferencePool and
ScaledObject from the upstream CRDs in tests/crds), served from a
thread so that tests, kubectl and the operator can all talk to it. It records every request:
`cluster.api_calls()` gives the operator's calls as (apiGroup, resource, verb) to compare with
RBAC rules. `operator` runs the real operator (kopf's KopfRunner, standalone, all namespaces)
against it. Each test works in its own namespace (`ns`), so one cluster and one operator serve
the whole module.
"""

import itertools
import pathlib

import pytest
import yaml

from tests.crds.validate import KEDA_CRD, POOL_CRDS
from tests.kube_emulator import EmulatedCluster, running_operator

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "charts" / "pagedserve" / "crds" / "llmdeployments.yaml"
EXAMPLES = ROOT / "examples"
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster():
    """A cluster with the GIE and KEDA CRDs installed beside ours."""
    with EmulatedCluster(crds=[CRD_PATH, POOL_CRDS["v1.6.0"], KEDA_CRD]) as emulated:
        yield emulated


@pytest.fixture(scope="module")
def operator(cluster):
    """The operator, cluster-wide, with a 1 s resync so optional children come back quickly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KUBECONFIG", cluster.kubeconfig)
        mp.setenv("PAGEDSERVE_RESYNC_INTERVAL", "1")
        mp.setenv("PAGEDSERVE_RETRY_DELAY", "600")
        mp.setenv("PAGEDSERVE_IMAGE_CPU", "registry.test/pagedserve:test-cpu")
        with running_operator(cluster) as runner:
            yield runner
    assert runner.exception is None, runner.output[-3000:]


@pytest.fixture
def ns() -> str:
    return f"test-{next(_names)}"


@pytest.fixture(scope="session")
def crd() -> dict:
    """The CRD from the chart: the one definition of the LLMDeployment resource."""
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="session")
def crd_validator(crd):
    """A jsonschema validator for LLMDeployment bodies, from the CRD's OpenAPI schema."""
    import jsonschema

    schema = _to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


@pytest.fixture(scope="session")
def examples() -> list[pathlib.Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def _to_json_schema(node):
    """The CRD's OpenAPI v3 schema as plain JSON Schema (draft 4): int-or-string becomes anyOf,
    the x-kubernetes-* extensions (CEL rules, list types) are dropped."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        pattern = out.pop("pattern", None)
        string = {"type": "string", **({"pattern": pattern} if pattern else {})}
        out["anyOf"] = [{"type": "integer"}, string]
    if (
        out.get("type") == "object"
        and "properties" in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out.setdefault("additionalProperties", False)  # a structural schema prunes unknown fields
    return out


@pytest.fixture(scope="session")
def with_crd_defaults(crd):
    """What the API server's defaulting does to a spec (the CRD's `default:` values filled in)."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return lambda spec: _apply_defaults(schema, spec)


def _apply_defaults(schema: dict, value):
    """What the API server's defaulting does to an object: fill absent fields that have defaults."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    out = dict(value)
    for key, sub in schema["properties"].items():
        if key not in out and "default" in sub:
            out[key] = sub["default"]
        if key in out:
            out[key] = _apply_defaults(sub, out[key])
    return out
