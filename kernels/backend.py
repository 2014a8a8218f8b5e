"""The one place that decides which kernel implementation runs.

`select_backend` rebinds the op names of the `pagedserve.kernels` package to the chosen
implementation, so the model code's `kernels.<op>(...)` costs one attribute lookup per call
with no branching. It is called once per process by the ModelRunner (each TP worker too).
"""
import importlib
import os
import sys

import torch

BACKENDS = ("torch", "cpu", "triton")
OPS = ("linear", "pack_linear_weight", "store_kv_cache", "paged_attention_decode",
       "paged_prefill_attention", "rms_norm", "rotary_embedding", "silu_and_mul", "fused_moe")
ENV_VAR = "PAGEDSERVE_KERNEL_BACKEND"
_MODULES = {"torch": "pagedserve.kernels.reference", "cpu": "pagedserve.kernels.cpu",
            "triton": "pagedserve.kernels.triton_ops"}
_active = "torch"


def triton_available() -> bool:
    """True when `import triton` works (the `kernels` extra, or ROCm torch's own Triton)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """TRITON_INTERPRET is on: @triton.jit then makes kernels that run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _check(name: str, device: torch.device) -> None:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    if name == "cpu" and device.type != "cpu":
        raise ValueError(f"kernel backend 'cpu' runs on CPU devices, not {str(device)!r}")
    if name != "triton":
        return
    if not triton_available():
        raise ValueError("kernel backend 'triton' needs Triton: pip install 'pagedserve[kernels]'")
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"kernel backend 'triton' on device {str(device)!r} needs a CUDA/ROCm "
                         "GPU, or TRITON_INTERPRET=1 (set before triton is imported) to "
                         "interpret the kernels on CPU")


def _default(device: torch.device) -> str:
    if device.type == "cuda" and triton_available():
        return "triton"
    return "cpu" if device.type == "cpu" else "torch"


def select_backend(device: torch.device | str, override: str | None = None) -> str:
    """Pick and activate the kernel backend for `device`; returns its name.

    `override` (EngineConfig.kernel_backend, --kernel-backend) wins over the environment
    variable PAGEDSERVE_KERNEL_BACKEND. By default Triton runs on CUDA/ROCm GPUs when it
    imports, the compiled C attention ("cpu") on CPUs when it builds, and torch otherwise.
    "cpu" that cannot build (no C compiler) becomes "torch", after one logged warning.
    """
    global _active
    device = torch.device(device)
    name = override or os.environ.get(ENV_VAR)
    if not name:
        name = _default(device)
    _check(name, device)
    if name == "cpu" and not importlib.import_module(_MODULES["cpu"]).available():
        name = "torch"
    impl = importlib.import_module(_MODULES[name])
    package = sys.modules["pagedserve.kernels"]
    for op in OPS:
        setattr(package, op, getattr(impl, op))
    _active = name
    return name


def active_backend() -> str:
    """Name of the backend that `kernels.<op>` currently calls."""
    return _active
