"""Style as a habit: ruff is clean over the tree, and no product function grows past 50 lines."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT = ["pagedserve", "engine", "kernels", "server", "operator", "benchmarks"]
MAX_FUNCTION_LINES = 50


def ruff() -> list[str]:
    exe = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed (it is in the test extra)")
    return [exe]


def test_ruff_check_is_clean():
    out = subprocess.run([*ruff(), "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def product_files():
    """Each product file once: os.walk does not follow pagedserve/'s links to the folders."""
    for top in PRODUCT:
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def test_no_product_function_is_over_50_lines():
    long = []
    for path in product_files():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} "
                                f"({lines} lines)")
    assert not long, "\n".join(long)
