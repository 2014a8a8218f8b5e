"""The README's Kubernetes walk-through points at files and names that exist."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def deploy_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Deploy on Kubernetes (Helm)", 1)[1].split("\n## ", 1)[0]


def test_walkthrough_has_the_install_path():
    section = deploy_section()
    for step in (
        "helm install pagedserve charts/pagedserve",
        "kubectl apply -f examples/",
        "kubectl get llmd",
        "curl http://localhost:8000/v1/chat/completions",
    ):
        assert step in section


def test_applied_examples_exist_and_serve_the_seed_models():
    section = deploy_section()
    files = re.findall(r"kubectl apply -f (examples/\S+\.yaml)", section)
    models = {yaml.safe_load((ROOT / f).read_text())["spec"]["model"] for f in files}
    assert models == {
        "Qwen/Qwen2-7B-Instruct",
        "01-ai/Yi-34B-Chat",
        "meta-llama/Meta-Llama-3-70B-Instruct",
    }


def test_curl_uses_the_service_and_model_name_of_an_example():
    section = deploy_section()
    service = re.search(r"kubectl port-forward svc/(\S+) ", section).group(1)
    model = re.search(r'"model": "([^"]+)"', section).group(1)
    examples = [yaml.safe_load(p.read_text()) for p in (ROOT / "examples").glob("*.yaml")]
    (example,) = [e for e in examples if e["metadata"]["name"] == service]
    assert model == example["spec"].get("servedModelName", example["spec"]["model"])
    assert f"http://{service}.default.svc.cluster.local:8000/v1" in section


def gateway_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("### Inference gateway and KEDA", 1)[1].split("\n## ", 1)[0]


def test_gateway_path_names_fit_together():
    from pagedserve.operator.config import OperatorConfig
    from pagedserve.operator.render import render_objects

    section = gateway_section()
    files = re.findall(r"kubectl apply -f (examples/\S+\.yaml)", section)
    assert all((ROOT / f).exists() for f in files) and len(files) == 3
    docs = {f: yaml.safe_load((ROOT / f).read_text()) for f in files}
    (owner,) = [d for d in docs.values() if d["kind"] == "LLMDeployment"]
    (route,) = [d for d in docs.values() if d["kind"] == "HTTPRoute"]
    (gateway,) = [d for d in docs.values() if d["kind"] == "Gateway"]
    (pool,) = [
        d
        for d in render_objects([owner], "default", OperatorConfig())
        if d["kind"] == "InferencePool"
    ]
    # the EPP chart's release makes the Service <release>-epp and watches the pool <release>
    release = re.search(
        r"helm install (\S+) oci://ghcr.io/llm-d/charts/llm-d-router-gateway", section
    ).group(1)
    assert pool["metadata"]["name"] == release
    assert pool["spec"]["endpointPickerRef"]["name"] == f"{release}-epp"
    label = re.search(r"matchLabels\.app\\\.kubernetes\\\.io/instance=(\S+?)'", section).group(1)
    assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == label
    assert route["spec"]["parentRefs"][0]["name"] == gateway["metadata"]["name"]
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == pool["metadata"]["name"]
    assert f"get gateway {gateway['metadata']['name']}" in section
    model = re.search(r'"model": "([^"]+)"', section).group(1)
    assert model == owner["spec"].get("servedModelName", owner["spec"]["model"])
