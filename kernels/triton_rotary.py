"""Triton rotary position embedding (neox layout), applied in place to queries and keys."""
import torch
import triton
import triton.language as tl

from pagedserve.kernels.triton_utils import pow2


@triton.jit
def _rotate(x_ptr, s_t, s_h, t, cos, sin, HEADS: tl.constexpr, HALF: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    c = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < HEADS) & (c < HALF)
    p1 = x_ptr + t * s_t + h * s_h + c
    x1 = tl.load(p1, mask=mask).to(tl.float32)
    x2 = tl.load(p1 + HALF, mask=mask).to(tl.float32)
    tl.store(p1, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(p1 + HALF, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary(pos_ptr, q_ptr, k_ptr, cs_ptr, s_qt, s_qh, s_kt, s_kh, s_cs,
            Q_HEADS: tl.constexpr, K_HEADS: tl.constexpr, HALF: tl.constexpr,
            BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    c = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cs_ptr + pos * s_cs + c, mask=c < HALF)
    sin = tl.load(cs_ptr + pos * s_cs + HALF + c, mask=c < HALF)
    _rotate(q_ptr, s_qt, s_qh, t, cos, sin, Q_HEADS, HALF, BLOCK_QH, BLOCK_HALF)
    _rotate(k_ptr, s_kt, s_kh, t, cos, sin, K_HEADS, HALF, BLOCK_KH, BLOCK_HALF)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> None:
    """Neox-style rotary embedding applied in place to q [T, Hq, D] and k [T, Hkv, D].

    cos_sin_cache: [max_position, D] fp32, cos in the first half and sin in the second.
    """
    num_tokens, q_heads, head = q.shape
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("rotary_embedding works in place: q and k need a contiguous last dim")
    if num_tokens == 0:
        return
    half = head // 2
    _rotary[(num_tokens,)](positions, q, k, cos_sin_cache, q.stride(0), q.stride(1),
                           k.stride(0), k.stride(1), cos_sin_cache.stride(0), Q_HEADS=q_heads,
                           K_HEADS=k.shape[1], HALF=half, BLOCK_QH=pow2(q_heads),
                           BLOCK_KH=pow2(k.shape[1]), BLOCK_HALF=pow2(half))
