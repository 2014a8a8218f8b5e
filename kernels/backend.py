"""The one place that decides which kernel implementation runs."""
import os

import torch

BACKENDS = ("torch",)
_active = "torch"


def select_backend(device: torch.device, override: str | None = None) -> str:
    """Pick the kernel backend for `device`; `override` or PAGEDSERVE_KERNEL_BACKEND wins."""
    global _active
    name = override or os.environ.get("PAGEDSERVE_KERNEL_BACKEND") or "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    _active = name
    return name


def active_backend() -> str:
    return _active
