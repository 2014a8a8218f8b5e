"""`pagedserve operator render -f FILE`: the operator's children as a YAML stream, offline."""

import pathlib
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.labels import child_name
from pagedserve.operator.render import RenderError, render_objects
from tests.crds.validate import KEDA_CRD, LWS_CRD, POOL_CRDS, load, validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
GATEWAY_EXAMPLE = ROOT / "examples" / "gateway" / "llmdeployment.yaml"
CRD_FOR = {
    "InferencePool": [load(path) for path in POOL_CRDS.values()],
    "ScaledObject": [load(KEDA_CRD)],
    "LeaderWorkerSet": [load(LWS_CRD)],
}


def pagedserve(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    # no cluster: a kubeconfig that does not exist, and no in-cluster service account
    env = {
        "PATH": "/usr/bin:/bin",
        "KUBECONFIG": str(ROOT / "no-such-kubeconfig"),
        "HOME": "/nonexistent",
        "PAGEDSERVE_IMAGE_CPU": "registry.test/ps:cpu",
    }
    return subprocess.run(
        [sys.executable, "-m", "pagedserve", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def test_render_prints_what_the_operator_builds_and_it_validates():
    out = pagedserve("operator", "render", "-f", str(GATEWAY_EXAMPLE))
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    config = OperatorConfig.from_env({"PAGEDSERVE_IMAGE_CPU": "registry.test/ps:cpu"})
    assert docs == render_objects(
        list(yaml.safe_load_all(GATEWAY_EXAMPLE.read_text())), "default", config
    )
    owner = yaml.safe_load(GATEWAY_EXAMPLE.read_text())
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Deployment", "Service", "ScaledObject", "InferencePool"]
    for doc in docs:
        assert doc["metadata"]["name"] == child_name(doc["kind"], owner["metadata"]["name"])
        assert "ownerReferences" not in doc["metadata"]  # they need the uid the cluster assigns
        if doc["kind"] in CRD_FOR:
            for crd in CRD_FOR[doc["kind"]]:
                validate(doc, crd)
        else:
            kubernetes_validate.validate(doc, "1.37", strict=True)


def test_render_reads_every_document_of_a_stream_from_stdin():
    text = "".join(f"---\n{p.read_text()}" for p in sorted((ROOT / "examples").glob("*.yaml")))
    out = pagedserve("operator", "render", "-f", "-", "-n", "models", stdin=text)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    owners = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    deployments = [  # the pods' owner: a Deployment, or a multi-node example's LeaderWorkerSet
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in docs
        if d["kind"] in ("Deployment", "LeaderWorkerSet")
    ]
    assert deployments == [
        (o["metadata"].get("namespace", "models"), o["metadata"]["name"]) for o in owners
    ]


@pytest.mark.parametrize(
    "spec, field",
    [
        (
            {"model": "m", "autoscaling": {"maxReplicas": 2, "engine": "kpa"}},
            "spec.autoscaling.engine",
        ),
        (
            {
                "model": "m",
                "inferencePool": {"enabled": True, "endpointPickerRef": {"port": {"number": 0}}},
            },
            "spec.inferencePool.endpointPickerRef.port.number",
        ),
        ({"model": "m", "replicas": "two"}, "spec.replicas"),
    ],
)
def test_invalid_spec_exits_1_with_one_line_naming_the_field(tmp_path, spec, field):
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "pagedserve.io/v1alpha1",
                "kind": "LLMDeployment",
                "metadata": {"name": "bad"},
                "spec": spec,
            }
        )
    )
    out = pagedserve("operator", "render", "-f", str(path))
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith("error: ") and field in line and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("kind: Deployment\napiVersion: apps/v1\n", "not an pagedserve.io/v1alpha1 LLMDeployment"),
        (
            "apiVersion: pagedserve.io/v1alpha1\nkind: LLMDeployment\n"
            "metadata: {name: Bad_Name}\nspec: {model: m}\n",
            "metadata.name 'Bad_Name' must be a DNS label",
        ),
    ],
)
def test_documents_that_are_no_valid_llmdeployment_are_refused_by_name(text, message):
    with pytest.raises(RenderError, match=message):
        render_objects(list(yaml.safe_load_all(text)), "default", OperatorConfig())


@pytest.mark.parametrize(
    "path, text, message",
    [("/no/such/file.yaml", None, "No such file"), ("-", "a: [\n", "not YAML")],
)
def test_unreadable_input_is_one_line(path, text, message):
    out = pagedserve("operator", "render", "-f", path, stdin=text)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and message in out.stderr


def test_gateway_example_route_targets_the_rendered_pool():
    route = yaml.safe_load((GATEWAY_EXAMPLE.parent / "httproute.yaml").read_text())
    pools = [
        d
        for d in render_objects(
            [yaml.safe_load(GATEWAY_EXAMPLE.read_text())], "default", OperatorConfig()
        )
        if d["kind"] == "InferencePool"
    ]
    (pool,) = pools
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {
            "group": "inference.networking.k8s.io",
            "kind": "InferencePool",
            "name": pool["metadata"]["name"],
        }
    ]
