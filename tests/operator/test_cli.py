"""`pagedserve operator`: flags and env reach kopf and the handlers; no torch; a real process."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from pagedserve.cli import build_parser
from pagedserve.operator.config import OperatorConfig
from tests.kube_emulator import llmdeployment, wait_for


def test_operator_package_does_not_import_torch_or_test_support():
    code = (
        "import sys, pagedserve.operator.handlers, pagedserve.operator.cli; "
        "print(sorted(m for m in "
        "('torch', 'pagedserve.engine.llm', 'pagedserve.server.app', 'kmock')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_config_reads_env_then_flags():
    config = OperatorConfig.from_env(
        {"PAGEDSERVE_IMAGE_AMD": "reg/x:rocm", "PAGEDSERVE_RESYNC_INTERVAL": "15"},
        resync_interval="5",
        image_cpu=None,
    )
    assert (config.image("amd"), config.resync_interval) == ("reg/x:rocm", 5.0)
    assert config.image("cpu").endswith("-cpu") and config.image("nvidia").endswith("-cuda")
    with pytest.raises(ValueError, match="retry_delay must be a float, got 'soon'"):
        OperatorConfig.from_env({"PAGEDSERVE_RETRY_DELAY": "soon"})
    with pytest.raises(ValueError):
        OperatorConfig.from_env({"PAGEDSERVE_GPU_GROUPS": "video"})


@pytest.mark.parametrize(
    "argv, clusterwide, namespaces, standalone, peering",
    [
        ([], True, [], True, None),
        (["--all-namespaces", "--standalone"], True, [], True, None),
        (
            ["-n", "a", "--namespace", "b", "--peering", "pagedserve"],
            False,
            ["a", "b"],
            False,
            "pagedserve",
        ),
    ],
)
def test_flags_reach_kopf(monkeypatch, argv, clusterwide, namespaces, standalone, peering):
    import kopf

    seen = {}
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(kopf, "configure", lambda **kwargs: None)
    monkeypatch.setenv("PAGEDSERVE_IMAGE_NVIDIA", "env/nvidia:1")
    args = build_parser().parse_args(
        [
            "operator",
            *argv,
            "--image-cpu",
            "flag/cpu:1",
            "--liveness",
            "http://0.0.0.0:8080/healthz",
        ]
    )
    assert args.run(args) == 0
    assert (
        seen["clusterwide"],
        list(seen["namespaces"]),
        seen["standalone"],
        seen["peering_name"],
    ) == (clusterwide, namespaces, standalone, peering)
    assert seen["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
    config = seen["memo"].config
    assert (config.image_cpu, config.image_nvidia) == ("flag/cpu:1", "env/nvidia:1")


def test_namespace_and_all_namespaces_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "-n", "a", "--all-namespaces"])
    assert "not allowed with" in capsys.readouterr().err


def test_pagedserve_operator_process_reconciles_and_stops_on_sigterm(cluster, ns, tmp_path):
    program = pathlib.Path(sys.executable).parent / "pagedserve"
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig, "PAGEDSERVE_LOG_LEVEL": "warning"}
    log = tmp_path / "operator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(program), "operator", "--namespace", ns, "--image-cpu", "proc/cpu:7"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        cluster.kube.create("LLMDeployment", ns, llmdeployment("viacli", ns))
        dep = wait_for(
            lambda: proc.poll() is None and cluster.kube.get("Deployment", ns, "viacli"),
            timeout=60,
            what="the Deployment from `pagedserve operator`",
        )
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "proc/cpu:7"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
