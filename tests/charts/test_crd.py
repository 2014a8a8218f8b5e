"""One LLMDeployment CRD: the chart installs the file the operator's tests load."""

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "pagedserve" / "crds" / "llmdeployments.yaml"
SKIP_DIRS = {".git", ".venv", "node_modules", "build", "dist"}


def repo_files(suffixes: tuple[str, ...]):
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        yield from (Path(folder) / f for f in files if f.endswith(suffixes))


def defines_llmdeployment_crd(path: Path) -> bool:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return any(
        isinstance(d, dict)
        and d.get("kind") == "CustomResourceDefinition"
        and (d.get("metadata") or {}).get("name") == "llmdeployments.pagedserve.io"
        for d in docs
    )


def test_chart_ships_the_llmdeployment_crd(chart):
    if not CRD.exists():
        pytest.skip("the CRD (operator issue) has not landed yet")
    crds = chart.crds()
    assert crds["LLMDeployment"] == yaml.safe_load(CRD.read_text())
    names = crds["LLMDeployment"]["spec"]["names"]
    assert (names["plural"], names["shortNames"]) == ("llmdeployments", ["llmd"])


def test_no_second_copy_of_the_crd_anywhere():
    copies = [p for p in repo_files((".yaml", ".yml", ".json")) if defines_llmdeployment_crd(p)]
    assert copies in ([], [CRD]), f"CRD copies that can drift: {copies}"


def test_operator_tests_load_the_chart_crd():
    conftest = ROOT / "tests" / "operator" / "conftest.py"
    if not conftest.exists():
        pytest.skip("the operator's tests have not landed yet")
    spec = importlib.util.spec_from_file_location("operator_tests_conftest", conftest)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert Path(module.CRD_PATH).resolve() == CRD
