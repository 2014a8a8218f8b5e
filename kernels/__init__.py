"""Kernels the engine's model code calls: a torch reference, compiled C attention for CPUs
and Triton versions for GPUs.

Model code calls `kernels.<op>(...)` (never `from pagedserve.kernels import <op>`): which
implementation runs is decided once, by `select_backend` in `backend.py`, which rebinds the
names below. Until then they are the torch reference. Triton is imported only when chosen.
"""
from pagedserve.kernels.backend import active_backend, select_backend
from pagedserve.kernels.reference import (
                                          fused_moe,
                                          linear,
                                          pack_linear_weight,
                                          paged_attention_decode,
                                          paged_prefill_attention,
                                          rms_norm,
                                          rotary_embedding,
                                          silu_and_mul,
                                          store_kv_cache,
)

__all__ = ["select_backend", "active_backend", "linear", "pack_linear_weight",
           "store_kv_cache", "paged_attention_decode",
           "paged_prefill_attention", "rms_norm", "rotary_embedding", "silu_and_mul", "fused_moe"]
