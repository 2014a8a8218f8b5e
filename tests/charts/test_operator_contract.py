"""The chart starts the operator the way the operator's own code expects: the Deployment's
command parses with the real `pagedserve` CLI, and its environment configures OperatorConfig."""

import dataclasses
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import tomllib
import yaml

from pagedserve.cli import SUBCOMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    "operator" not in SUBCOMMANDS, reason="`pagedserve operator` (issue 6) has not landed"
)


def parsed_operator_args(chart, values):
    container = chart.operator_container(chart.render(values))
    assert container["command"] == ["pagedserve"]
    args = build_parser().parse_args(container["args"])  # SystemExit here = a flag the CLI lacks
    assert args.command == "operator"
    return container, args


def plain_env(container) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_operator_command_parses_for_every_value_set(value_set, chart):
    values = chart.value_set(value_set)
    _, args = parsed_operator_args(chart, values)
    op = values.get("operator", {})
    watched = op.get("watchNamespaces", [])
    assert args.namespace == watched and args.all_namespaces == (not watched)
    peering = op.get("peering", {}).get("enabled", True)
    assert args.standalone == (not peering) and args.peering == ("pagedserve" if peering else None)
    assert args.log_level == op.get("logLevel", "info")


def test_extra_args_reach_the_parser(chart):
    _, args = parsed_operator_args(chart, {"operator": {"extraArgs": ["--resync-interval", "15"]}})
    assert args.resync_interval == "15"


def test_liveness_probe_hits_the_endpoint_the_operator_serves(chart):
    container, args = parsed_operator_args(chart, {})
    url = urlparse(args.liveness)
    probe = container["livenessProbe"]["httpGet"]
    (port,) = [p for p in container["ports"] if p["name"] == probe["port"]]
    assert (url.port, url.path) == (port["containerPort"], probe["path"])
    assert url.hostname == "0.0.0.0"  # the kubelet probes the pod IP, not localhost


def test_environment_configures_the_operator(chart):
    from pagedserve.operator.config import OperatorConfig

    settings = {
        "resyncInterval": 15,
        "retryDelay": "30",
        "hpaMetric": "pagedserve:num_requests_running",
        "runAsUser": 2000,
        "gpuGroups": "44,109",
    }
    values = {
        "operator": {"settings": settings},
        "engine": {
            "image": {"repository": "reg.example/ps", "tag": "1.2"},
            "images": {"cpu": "reg.example/ps-cpu:dev"},
        },
    }
    container, _ = parsed_operator_args(chart, values)
    config = OperatorConfig.from_env(plain_env(container))
    assert config.image("amd") == "reg.example/ps:1.2-rocm"
    assert config.image("nvidia") == "reg.example/ps:1.2-cuda"
    assert config.image("cpu") == "reg.example/ps-cpu:dev"
    assert (config.resync_interval, config.retry_delay) == (15.0, 30.0)
    assert config.hpa_metric == "pagedserve:num_requests_running"
    assert (config.run_as_user, config.gpu_group_ids) == ("2000", [44, 109])


def test_empty_settings_keep_the_operator_defaults(chart):
    from pagedserve.operator.config import OperatorConfig

    container, _ = parsed_operator_args(chart, {})
    assert not [
        name
        for name in plain_env(container)
        if name.startswith("PAGEDSERVE_") and not name.startswith("PAGEDSERVE_IMAGE_")
    ]
    # and the chart's default images are the operator's own defaults (same version, same tags)
    assert OperatorConfig.from_env(plain_env(container)) == OperatorConfig.from_env({})


def test_every_operator_setting_has_a_chart_value(chart):
    from pagedserve.operator.config import OperatorConfig

    values = chart.loaded.values
    reachable = {f"image_{a}" for a in values["engine"]["images"]}
    reachable |= {
        re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower() for key in values["operator"]["settings"]
    }
    assert reachable == {f.name for f in dataclasses.fields(OperatorConfig)}


def test_chart_app_version_is_the_package_version():
    import pagedserve
    chart_yaml = yaml.safe_load((ROOT / "charts" / "pagedserve" / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # the package's attribute is the one place the version is written; pyproject reads it
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "pagedserve.__version__"}
    assert chart_yaml["appVersion"] == pagedserve.__version__


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_log_level_value_sets_the_operators_log_level(chart, level):
    import logging

    from pagedserve.operator.cli import _configure_logging

    _, args = parsed_operator_args(chart, {"operator": {"logLevel": level}})
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    try:
        _configure_logging(args.log_level)
        assert root.level == getattr(logging, level.upper())
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_service_monitor_selects_the_services_the_operator_makes(chart):
    from pagedserve.operator.manifests import service
    from pagedserve.operator.spec import parse_spec

    owner = {
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "u"},
        "spec": {"model": "m"},
    }
    svc = service(owner, parse_spec(owner["spec"]))
    docs = chart.render({"metrics": {"serviceMonitor": {"enabled": True}}})
    (sm,) = chart.find(docs, "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_models_from_values_are_specs_the_operator_accepts(chart):
    from pagedserve.operator.spec import parse_spec

    docs = chart.find(chart.render(chart.value_set("seed-models")), "LLMDeployment")
    specs = [parse_spec(d["spec"]) for d in docs]
    assert sorted(s.tensor_parallel_size for s in specs) == [1, 4, 4]
