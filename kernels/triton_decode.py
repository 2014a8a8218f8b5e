"""Triton decode attention over the paged KV cache: one query token per sequence.

One program serves one (sequence, KV head, split): it loads the KV head's tiles once for all
of its query heads (GQA), reading the cache in place through the block table. Long contexts
are split across programs (flash-decoding) so that a small batch still fills the GPU; a
second kernel then merges the splits by their log-sum-exp.
"""
import math

import torch
import triton
import triton.language as tl

from pagedserve.kernels.triton_utils import INTERPRETED, attend_tile, page_offsets, pow2, sm_count
from pagedserve.kernels.utils import cdiv

MAX_SPLITS = 64
PROGRAMS_PER_SM = 4  # enough resident programs per SM to keep memory requests in flight


@triton.jit
def _decode_split(q_ptr, kc_ptr, vc_ptr, bt_ptr, lens_ptr, o_ptr, lse_ptr, scale_log2,
                  split_tokens, window, s_qb, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_bt,
                  s_ob, s_oh, s_os, s_lb, s_lh,
                  GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD: tl.constexpr,
                  BLOCK_D: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                  FP32_DOT: tl.constexpr, SPLIT: tl.constexpr, SOFT_CAP: tl.constexpr):
    b, hk, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(lens_ptr + b)
    start = s * split_tokens
    end = tl.minimum(seq_len, start + split_tokens)
    # a sliding window: only the last `window` positions are visible
    start = tl.where(window > 0, tl.maximum(start, seq_len - window), start)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = hk * GROUP + g
    gd_mask = (g < GROUP)[:, None] & (d < HEAD)[None, :]
    q = tl.load(q_ptr + b * s_qb + heads[:, None] * s_qh + d[None, :], mask=gd_mask, other=0.0)
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        tok_mask = tok < end
        nd_mask = tok_mask[:, None] & (d < HEAD)[None, :]
        k_rows = page_offsets(bt_ptr + b * s_bt, tok, tok_mask, PAGE, s_kb, s_kt)
        v_rows = page_offsets(bt_ptr + b * s_bt, tok, tok_mask, PAGE, s_vb, s_vt)
        k = tl.load(kc_ptr + (k_rows + hk * s_kh)[:, None] + d[None, :], mask=nd_mask, other=0.0)
        v = tl.load(vc_ptr + (v_rows + hk * s_vh)[:, None] + d[None, :], mask=nd_mask, other=0.0)
        m, l, acc = attend_tile(q, k, v, tok_mask[None, :], m, l, acc, scale_log2, FP32_DOT,
                                SOFT_CAP)
    # an empty split (past this sequence's end, or before its window) leaves l == 0 and
    # weighs nothing in the merge
    l_safe = tl.where(l > 0, l, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = o_ptr + b * s_ob + heads[:, None] * s_oh + s * s_os + d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=gd_mask)
    if SPLIT:
        lse = tl.where(l > 0, m + tl.log2(l_safe), float("-inf"))
        tl.store(lse_ptr + b * s_lb + heads * s_lh + s, lse, mask=g < GROUP)


@triton.jit
def _decode_merge(po_ptr, lse_ptr, o_ptr, num_splits, s_pb, s_ph, s_ps, s_lb, s_lh, s_ob, s_oh,
                  HEAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    b, h = tl.program_id(0), tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(lse_ptr + b * s_lb + h * s_lh + sp, mask=sp < num_splits, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))  # the last token's split is not empty: a finite max
    mask = (sp < num_splits)[:, None] & (d < HEAD)[None, :]
    po = tl.load(po_ptr + b * s_pb + h * s_ph + sp[:, None] * s_ps + d[None, :], mask=mask,
                 other=0.0)
    out = tl.sum(po * w[:, None], 0) / tl.sum(w, 0)
    tl.store(o_ptr + b * s_ob + h * s_oh + d, out.to(o_ptr.dtype.element_ty), mask=d < HEAD)


def _tiles(head: int, dtype: torch.dtype) -> tuple[int, int]:
    """(KV tokens per tile, warps). fp32 dots run without tensor cores and need more registers:
    smaller tiles and more warps keep them from spilling and tiles inside MI300's 64 KiB LDS
    (checked per target by benchmarks/kernel_compile.py)."""
    if dtype == torch.float32:
        return (16, 4) if head > 128 else (32, 8)
    return (32 if head > 128 else 64), 4


def choose_splits(batch: int, kv_heads: int, max_tokens: int, block_n: int,
                  device: torch.device) -> int:
    """Splits per sequence so that about PROGRAMS_PER_SM programs run on every SM."""
    want = cdiv(PROGRAMS_PER_SM * sm_count(device), batch * kv_heads)
    return max(1, min(want, cdiv(max_tokens, block_n), MAX_SPLITS))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                     num_splits: int | None = None, sliding_window: int | None = None,
                     logits_soft_cap: float | None = None) -> torch.Tensor:
    """paged_attention_decode with an explicit split count (None: choose for the device)."""
    batch, q_heads, head = q.shape
    page, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty_like(q)
    # the table's width bounds every context without reading seq_lens back from the GPU
    max_tokens = block_tables.shape[1] * page
    block_n, warps = _tiles(head, q.dtype)
    splits = num_splits or choose_splits(batch, kv_heads, max_tokens, block_n, q.device)
    split_tokens = cdiv(cdiv(max_tokens, splits), block_n) * block_n if splits > 1 else max_tokens
    splits = cdiv(max_tokens, split_tokens)
    fp32_dot = INTERPRETED or q.dtype == torch.float32
    common = dict(GROUP=group, BLOCK_G=pow2(group, 16), HEAD=head, BLOCK_D=pow2(head, 16),
                  PAGE=page, BLOCK_N=block_n, FP32_DOT=fp32_dot,
                  SOFT_CAP=float(logits_soft_cap or 0.0), num_warps=warps)
    args = (q, k_cache, v_cache, block_tables, seq_lens)
    window = sliding_window or 0
    strides = (q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
               block_tables.stride(0))
    scale_log2 = scale * math.log2(math.e)
    if splits == 1:
        _decode_split[(batch, kv_heads, 1)](*args, out, out, scale_log2, split_tokens, window,
                                            *strides,
                                            out.stride(0), out.stride(1), 0, 0, 0, SPLIT=False,
                                            **common)
        return out
    part = torch.empty(batch, q_heads, splits, head, dtype=torch.float32, device=q.device)
    lse = torch.empty(batch, q_heads, splits, dtype=torch.float32, device=q.device)
    _decode_split[(batch, kv_heads, splits)](*args, part, lse, scale_log2, split_tokens, window,
                                             *strides, *part.stride()[:3], *lse.stride()[:2],
                                             SPLIT=True, **common)
    _decode_merge[(batch, q_heads)](part, lse, out, splits, *part.stride()[:3],
                                    *lse.stride()[:2], out.stride(0), out.stride(1), HEAD=head,
                                    BLOCK_D=pow2(head), BLOCK_S=pow2(splits))
    return out


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None,
                           logits_soft_cap: float | None = None) -> torch.Tensor:
    """One query token per sequence, q [B, Hq, D], over seq_lens[i] cached tokens."""
    return decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, None,
                            sliding_window, logits_soft_cap)
