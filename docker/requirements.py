"""Print the pip requirements an image needs, read from pyproject.toml.

The images install our wheel with `--no-deps` and then exactly these lines, so a
preinstalled torch (the ROCm base's, or a wheel picked for CPU/CUDA) and its Triton are
never replaced. torch and triton are always left out; the image supplies them.

    python docker/requirements.py server          # core deps + the server extra
    python docker/requirements.py --without-deps server   # what pip installs with --no-deps
    python docker/requirements.py --no-core operator   # only the operator extra
"""
import argparse
import re
import sys
from pathlib import Path

import tomllib

# The image provides these itself; a plain requirement would pull a CUDA build over ROCm.
PROVIDED_BY_IMAGE = {"torch", "triton"}
# Installed with --no-deps, because they require `triton` by name: on a ROCm base Triton is
# the distribution pytorch-triton-rocm, so pip would add PyPI's CUDA triton beside it. Their
# other requirements (from their metadata) are installed normally instead.
WITHOUT_DEPS = {"xgrammar": ["apache-tvm-ffi", "numpy", "pydantic", "transformers",
                             "typing-extensions"]}


def requirement_name(line: str) -> str:
    """The normalised distribution name of a requirement line ("Foo_Bar>=1" -> "foo-bar")."""
    name = re.match(r"[A-Za-z0-9._-]+", line.strip())
    if name is None:
        raise ValueError(f"cannot read a requirement name from {line!r}")
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def image_requirements(pyproject: dict, extras: list[str], core: bool = True,
                       without_deps: bool = False) -> list[str]:
    """Requirement lines for `core` deps plus `extras`, minus what the image provides; the
    WITHOUT_DEPS ones are replaced by their own requirements, or alone if `without_deps`."""
    project = pyproject["project"]
    known = project.get("optional-dependencies", {})
    lines = list(project["dependencies"]) if core else []
    for extra in extras:
        if extra not in known:
            raise ValueError(f"unknown extra {extra!r}; pyproject.toml has {sorted(known)}")
        lines += known[extra]
    kept = [line for line in lines if requirement_name(line) not in PROVIDED_BY_IMAGE]
    if any(requirement_name(line) == "pagedserve" for line in kept):
        raise ValueError("nested extras (pagedserve[...]) are not supported here; "
                         "list extras directly")
    if without_deps:
        return [line for line in kept if requirement_name(line) in WITHOUT_DEPS]
    resolved = [line for line in kept if requirement_name(line) not in WITHOUT_DEPS]
    for line in kept:
        resolved += WITHOUT_DEPS.get(requirement_name(line), [])
    names = set()
    return [line for line in resolved
            if not (requirement_name(line) in names or names.add(requirement_name(line)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="extras from pyproject.toml to include")
    parser.add_argument("--no-core", dest="core", action="store_false",
                        help="leave out the core dependencies (the operator image needs none)")
    parser.add_argument("--without-deps", action="store_true",
                        help="only the requirements to install with pip's --no-deps")
    parser.add_argument("--pyproject", type=Path,
                        default=Path(__file__).parent.parent / "pyproject.toml")
    args = parser.parse_args(argv)
    pyproject = tomllib.loads(args.pyproject.read_text())
    print("\n".join(image_requirements(pyproject, args.extras, args.core, args.without_deps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
