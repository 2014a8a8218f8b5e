"""The Triton backend: the same functions as reference.py, one Triton kernel each (linear
stays torch's: the GPU BLAS is the fast path there)."""
from pagedserve.kernels.reference import linear, pack_linear_weight
from pagedserve.kernels.triton_activation import silu_and_mul
from pagedserve.kernels.triton_cache import store_kv_cache
from pagedserve.kernels.triton_decode import paged_attention_decode
from pagedserve.kernels.triton_moe import fused_moe
from pagedserve.kernels.triton_norm import rms_norm
from pagedserve.kernels.triton_prefill import paged_prefill_attention
from pagedserve.kernels.triton_rotary import rotary_embedding

__all__ = ["linear", "pack_linear_weight", "store_kv_cache", "paged_attention_decode",
           "paged_prefill_attention", "rms_norm", "rotary_embedding", "silu_and_mul", "fused_moe"]
