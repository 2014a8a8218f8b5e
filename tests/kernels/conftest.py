"""Kernel test helpers. Without a GPU the Triton kernels run in Triton's CPU interpreter,
which must be switched on before any kernel module is imported (that happens here, first)."""
import os
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

# Tolerances against an fp32 reference (attention) and a same-dtype reference (pointwise).
# The interpreter rounds fp32 -> bf16 toward zero (GPUs round to nearest): one bf16 ulp more.
ATTN_TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
POINTWISE_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3),
                 torch.bfloat16: (1e-2, 3.2e-2)}
_max_errors: dict[str, float] = {}


@dataclass
class Paged:
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor


def make_paged(seq_lens: list[int], page: int, kv_heads: int, head: int,
               dtype: torch.dtype = torch.float32, device: torch.device = DEVICE) -> Paged:
    """Random caches whose blocks are handed out shuffled, with a spare block at each end of
    the pool so that reading past a sequence's table picks up unrelated numbers."""
    counts = [-(-n // page) for n in seq_lens]
    num_blocks = sum(counts) + 2
    shape = (num_blocks, page, kv_heads, head)
    k = torch.randn(shape, device=device).to(dtype)
    v = torch.randn(shape, device=device).to(dtype)
    ids = (torch.randperm(num_blocks - 2) + 1).tolist()
    table = torch.zeros(len(seq_lens), max(counts) + 1, dtype=torch.int32)  # one unused column
    for i, c in enumerate(counts):
        table[i, :c] = torch.tensor(ids[:c], dtype=torch.int32)
        ids = ids[c:]
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    return Paged(k, v, table.to(device), lens.to(device))


def record(name: str, actual: torch.Tensor, expected: torch.Tensor) -> float:
    err = (actual.float() - expected.float()).abs().max().item() if actual.numel() else 0.0
    _max_errors[name] = max(_max_errors.get(name, 0.0), err)
    return err


def check_attention(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    """`expected` comes from the fp32 reference on the same (rounded) inputs."""
    assert actual.shape == expected.shape and actual.dtype != torch.float64
    err = record(f"{name} {str(actual.dtype)[6:]}", actual, expected)
    assert err <= ATTN_TOL[actual.dtype], f"{name}: max abs error {err:.3g}"


def check_pointwise(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    record(f"{name} {str(actual.dtype)[6:]}", actual, expected)
    atol, rtol = POINTWISE_TOL[actual.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def pytest_terminal_summary(terminalreporter) -> None:
    if _max_errors:
        where = "GPU" if DEVICE.type == "cuda" else "CPU interpreter"
        terminalreporter.write_sep("-", f"Triton vs torch reference, max abs error ({where})")
        for name, err in sorted(_max_errors.items()):
            terminalreporter.write_line(f"{name:40s} {err:.3g}")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # the same random inputs on every run


@pytest.fixture
def triton_ops():
    """The Triton backend module (imported after TRITON_INTERPRET is set)."""
    pytest.importorskip("triton")
    from pagedserve.kernels import triton_ops
    return triton_ops


@pytest.fixture(scope="session")
def kit():
    """Helpers for the kernel tests: device, make_paged, check_attention, check_pointwise."""
    return SimpleNamespace(device=DEVICE, make_paged=make_paged, check_attention=check_attention,
                           check_pointwise=check_pointwise)


@pytest.fixture(scope="session")
def cpu_kit():
    """The same helpers on the CPU whatever the machine has: for the compiled C kernels and
    the torch reference's own checks (on a GPU machine `kit` puts tensors on the GPU)."""
    def make_cpu_paged(*args, **kwargs) -> Paged:
        return make_paged(*args, **kwargs, device=torch.device("cpu"))
    return SimpleNamespace(device=torch.device("cpu"), make_paged=make_cpu_paged,
                           check_attention=check_attention, check_pointwise=check_pointwise)
