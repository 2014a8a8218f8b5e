"""The checkout must be harmless to any interpreter started in the repo root.

Python puts the working directory first on sys.path for `-c` and `-m`, so a top-level folder
that is a package would replace a standard-library module of the same name (operator/ did:
`python -m venv` died on Debian's python3). `-S` skips site .pth files, which otherwise import
`operator` early and hide the shadow, as this machine's interpreter and editable installs do.
"""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOCK = [exe for exe in ("/usr/bin/python3",) if os.path.exists(exe)]


def run_in_root(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("python", [sys.executable, *STOCK])
def test_stdlib_operator_is_not_shadowed_from_the_repo_root(python):
    probe = ("import collections, operator, sys; from operator import eq;"
             "print(operator.__file__)")
    out = run_in_root(python, "-S", "-c", probe)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.strip().startswith(REPO), out.stdout


@pytest.mark.parametrize("python", [sys.executable, *STOCK])
def test_python_m_venv_works_from_the_repo_root(python, tmp_path):
    out = run_in_root(python, "-S", "-m", "venv", "--without-pip", str(tmp_path / "venv"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "venv" / "bin" / "python").exists()


def test_the_source_tree_is_the_package_from_the_repo_root():
    """No package-dir mapping: `pagedserve.<component>` found from the root (no site
    packages at all) is the top-level folder, not a second copy."""
    probe = ("import pagedserve.operator.spec as s, pagedserve.engine.config as c;"
             "import os; print(os.path.realpath(s.__file__)); print(os.path.realpath(c.__file__))")
    out = run_in_root(sys.executable, "-S", "-c", probe)
    assert out.returncode == 0, out.stderr
    spec, config = out.stdout.split()
    assert spec == os.path.join(REPO, "operator", "spec.py")
    assert config == os.path.join(REPO, "engine", "config.py")


def test_operator_folder_is_not_a_regular_package():
    assert not os.path.exists(os.path.join(REPO, "operator", "__init__.py"))
    for name in ("engine", "kernels", "server", "operator", "benchmarks"):
        link = os.path.join(REPO, "pagedserve", name)
        assert os.path.islink(link) and os.readlink(link) == os.path.join("..", name)


def test_python_m_pagedserve_is_the_cli():
    out = run_in_root(sys.executable, "-m", "pagedserve", "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("pagedserve ")


def test_a_source_tree_without_install_metadata_runs(tmp_path):
    """A checkout copied to a machine and run as `python -m pagedserve` from its root (the
    GPU check runs so) has no pagedserve.egg-info or dist-info: nothing may ask for one."""
    os.symlink(os.path.join(REPO, "pagedserve"), tmp_path / "pagedserve")
    probe = ("import importlib.metadata as m, sys\n"
             "try:\n    m.version('pagedserve'); sys.exit('metadata found: not a bare tree')\n"
             "except m.PackageNotFoundError: pass\n"
             "from pagedserve.operator.config import OperatorConfig\n"
             "print(OperatorConfig().image_cpu)\n"
             "from pagedserve.cli import main\n"
             "main(['--version'])\n")
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import pagedserve
    image, version = out.stdout.split()[0], out.stdout.split()[-1]
    assert version == pagedserve.__version__ and image.endswith(f":{version}-cpu")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_links_are_committed_as_links():
    out = run_in_root("git", "ls-files", "-s", "pagedserve/engine")
    if out.returncode or not out.stdout:
        pytest.skip("not a git checkout")
    assert out.stdout.split()[0] == "120000"  # git's mode for a symbolic link


def test_every_cli_help_starts_without_the_other_components_extras():
    """`make demo` installs only the server extra: the CLI, which builds every subcommand's
    parser, must not import the operator's kubernetes client or kopf (nor the server's
    FastAPI for `pagedserve operator`)."""
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in BLOCKED:\n"
               "            raise ImportError(f'blocked: {name}')\n"
               "sys.meta_path.insert(0, Block())\n"
               "from pagedserve.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    for blocked, argv in ((["kubernetes", "kopf", "kmock"], ["serve", "--help"]),
                          (["kubernetes", "kopf", "kmock"], ["bench", "--help"]),
                          (["fastapi", "uvicorn", "torch"], ["operator", "--help"])):
        code = f"BLOCKED = {blocked!r}\n" + blocker
        out = run_in_root(sys.executable, "-c", code, *argv)
        assert out.returncode == 0, f"pagedserve {' '.join(argv)}: {out.stderr[-2000:]}"


def test_hugging_face_kernels_is_not_shadowed_from_the_repo_root():
    # transformers >= 5.25 imports Hugging Face's `kernels`; kernels/ here has the same name
    from importlib import metadata
    try:
        metadata.distribution("kernels")
    except metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels package is not installed (older transformers)")
    probe = ("import pagedserve, kernels; print(kernels.__file__); "
             "from pagedserve.engine.tokenizer import load_tokenizer; "
             "print(load_tokenizer('pagedserve/models/stories260K', False).encode('hi'))")
    out = run_in_root(sys.executable, "-c", probe)
    assert out.returncode == 0, out.stderr
    assert not out.stdout.startswith(os.path.join(REPO, "kernels", "")), out.stdout
