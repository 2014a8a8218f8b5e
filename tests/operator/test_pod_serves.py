"""The pod the operator renders really serves: its command, args and env, run as a local process.

Like a kubelet would: the Secret behind apiKeySecret is resolved into the environment, volumes are
mounted (here: temporary folders at the mount paths' place), the readiness probe gates traffic,
and termination is SIGTERM within terminationGracePeriodSeconds. Then the official openai client
talks to it on the Service's port.
"""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from pagedserve.cli import SUBCOMMANDS
from pagedserve.operator.config import OperatorConfig
from pagedserve.operator.manifests import desired_children
from pagedserve.operator.spec import parse_spec

pytestmark = [
    pytest.mark.slow,  # a real server process: torch import, model load, drain
    pytest.mark.skipif(
        "serve" not in SUBCOMMANDS, reason="`pagedserve serve` (the server issue) has not landed"
    ),
]
API_KEY = "sk-operator-test-7d2e"
SECRETS = {("api", "key"): API_KEY}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered_pod(port: int) -> dict:
    owner = {
        "apiVersion": "pagedserve.io/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": "stories", "namespace": "demo", "uid": "u-1"},
        "spec": {
            "model": "stories260K",
            "accelerator": "cpu",
            "service": {"port": port},
            "apiKeySecret": {"name": "api", "key": "key"},
            "engine": {"kvCacheMemory": "8Mi", "maxNumSeqs": 8},
            "shutdownTimeoutSeconds": 5,
        },
    }
    children = desired_children(owner, parse_spec(owner["spec"]), OperatorConfig.from_env({}))
    return {
        "pod": children["Deployment"]["spec"]["template"]["spec"],
        "service": children["Service"]["spec"],
    }


def kubelet_env(container: dict, mounts: dict[str, str]) -> dict[str, str]:
    env = {}
    for item in container["env"]:
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = SECRETS[(ref["name"], ref["key"])]
        else:  # a value naming a mount path points into the mounted volume
            env[item["name"]] = mounts.get(item["value"], item["value"])
    return env


def test_rendered_cpu_pod_serves_the_openai_api(tmp_path):
    port = free_port()
    rendered = rendered_pod(port)
    container = rendered["pod"]["containers"][0]
    mounts = {}
    for mount in container["volumeMounts"]:
        folder = tmp_path / mount["name"]
        folder.mkdir()
        mounts[mount["mountPath"]] = str(folder)
    (service_port,) = rendered["service"]["ports"]
    (container_port,) = [p for p in container["ports"] if p["name"] == service_port["targetPort"]]
    assert service_port["port"] == container_port["containerPort"] == port
    bin_dir = str(pathlib.Path(sys.executable).parent)
    program = shutil.which(container["command"][0], path=bin_dir)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        **kubelet_env(container, mounts),
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [program, *container["command"][1:], *container["args"]],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        probe = container["readinessProbe"]["httpGet"]
        health = f"http://127.0.0.1:{container_port['containerPort']}{probe['path']}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        base = f"http://127.0.0.1:{service_port['port']}/v1"
        client = openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0, timeout=60)
        (model,) = [m.id for m in client.models.list().data]
        done = client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=24, temperature=0
        )
        assert "Lily" in done.choices[0].text
        with pytest.raises(openai.AuthenticationError):  # the key from the Secret guards /v1
            openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
        metrics = httpx.get(
            f"http://127.0.0.1:{port}/metrics", timeout=10
        ).text  # what Prometheus scrapes
        assert "pagedserve:num_requests_waiting" in metrics
        proc.send_signal(signal.SIGTERM)  # after preStop, the kubelet's SIGTERM: drain, then exit
        assert proc.wait(timeout=rendered["pod"]["terminationGracePeriodSeconds"]) == 0, (
            log.read_text()[-3000:]
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
