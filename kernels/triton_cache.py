"""Triton store of the step's new keys and values into the paged KV cache."""
import torch
import triton
import triton.language as tl

from pagedserve.kernels.triton_utils import pow2


@triton.jit
def _store_kv(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, s_kt, s_kh, s_vt, s_vh,
              s_kcb, s_kct, s_kch, s_vcb, s_vct, s_vch,
              HEADS: tl.constexpr, HEAD: tl.constexpr, BLOCK_H: tl.constexpr,
              BLOCK_D: tl.constexpr, PAGE: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:  # padding token: nothing to store
        return
    block, off = slot // PAGE, slot % PAGE
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < HEADS) & (d < HEAD)
    k = tl.load(k_ptr + t * s_kt + h * s_kh + d, mask=mask)
    v = tl.load(v_ptr + t * s_vt + h * s_vh + d, mask=mask)
    kc = kc_ptr + block * s_kcb + off * s_kct + h * s_kch + d
    vc = vc_ptr + block * s_vcb + off * s_vct + h * s_vch + d
    tl.store(kc, k.to(kc_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(vc_ptr.dtype.element_ty), mask=mask)


def store_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write the step's new keys and values [T, Hkv, D] into the paged cache at their slots."""
    num_tokens, heads, head = key.shape
    if num_tokens == 0:
        return
    if key.stride(-1) != 1:
        key = key.contiguous()
    if value.stride(-1) != 1:
        value = value.contiguous()
    _store_kv[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping, key.stride(0), key.stride(1),
        value.stride(0), value.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), HEADS=heads, HEAD=head,
        BLOCK_H=pow2(heads), BLOCK_D=pow2(head), PAGE=k_cache.shape[1])
