"""Backend choice: one place, clear errors, and `kernels.<op>` rebound to the choice."""
import subprocess
import sys

import pytest
import torch

from pagedserve import kernels
from pagedserve.kernels import backend, reference


@pytest.fixture(autouse=True)
def back_to_torch(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    yield
    kernels.select_backend("cpu", "torch")


def test_cpu_defaults_to_compiled_attention_and_torch_stays_selectable():
    from pagedserve.kernels import cpu
    expected = "cpu" if cpu.available() else "torch"
    assert kernels.select_backend(torch.device("cpu")) == expected
    assert kernels.active_backend() == expected
    assert kernels.rms_norm is reference.rms_norm
    if expected == "cpu":
        assert kernels.paged_attention_decode is cpu.paged_attention_decode
    assert kernels.select_backend("cpu", "torch") == "torch"
    for op in backend.OPS:
        assert getattr(kernels, op) is getattr(reference, op)


def test_cpu_backend_needs_a_cpu_device():
    with pytest.raises(ValueError, match="'cpu' runs on CPU devices"):
        kernels.select_backend("cuda", "cpu")


def test_cuda_defaults_to_triton_when_it_imports(triton_ops):
    # nothing runs here, so no GPU is needed to check the choice
    assert kernels.select_backend("cuda") == "triton"
    for op in backend.OPS:
        assert getattr(kernels, op) is getattr(triton_ops, op)


def test_override_and_environment(monkeypatch, kit, triton_ops):
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert kernels.select_backend(kit.device) == "triton"  # on CPU: TRITON_INTERPRET=1 here
    assert kernels.paged_attention_decode is triton_ops.paged_attention_decode
    assert kernels.select_backend(kit.device, "torch") == "torch"  # the argument beats the env
    assert kernels.paged_attention_decode is reference.paged_attention_decode


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="'cudnn'"):
        kernels.select_backend("cpu", "cudnn")
    assert kernels.active_backend() == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        kernels.select_backend("cpu", "triton")
    assert kernels.active_backend() == "torch"


def test_engine_rejects_an_unknown_backend(tiny_model):
    from pagedserve import LLM
    with pytest.raises(ValueError, match="'nope'"):
        LLM(tiny_model(), device="cpu", kernel_backend="nope")


NO_TRITON = """
import sys
sys.modules["triton"] = None  # makes `import triton` fail
import pagedserve.kernels as k
assert k.select_backend("cpu") in ("cpu", "torch")
assert k.select_backend("cuda") == "torch"  # a GPU without Triton falls back to torch
try:
    k.select_backend("cpu", "triton")
except ValueError as e:
    print(e)
"""


def test_kernels_import_and_fall_back_without_triton():
    done = subprocess.run([sys.executable, "-c", NO_TRITON], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pagedserve[kernels]" in done.stdout
