"""Triton causal attention for a batch of variable-length new tokens over the paged cache.

Sequence i's new tokens are the last q_len_i of its seq_lens[i] tokens; its earlier tokens
(prefix-cache hits, earlier chunks of a chunked prefill) and the new ones were all stored in
the cache before this runs, so the kernel reads keys and values only from the cache, in place.

A program serves BLOCK_Q consecutive new tokens of one sequence times all query heads of one
KV head, so every KV tile loaded serves the whole GQA group. The programs of all sequences
are laid out on one grid axis without knowing the longest query on the host: sequence i owns
programs from `query_start_loc[i] // BLOCK_Q + i` on, found again by binary search.
"""
import math

import torch
import triton
import triton.language as tl

from pagedserve.kernels.triton_utils import INTERPRETED, attend_tile, page_offsets, pow2


def _tiles(head: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(query rows = tokens x heads of a group, KV tokens, warps) per program. fp32 dots run
    without tensor cores: smaller tiles keep registers from spilling and tiles inside MI300's
    64 KiB LDS (checked per target by benchmarks/kernel_compile.py)."""
    if dtype == torch.float32:
        return (16, 16, 4) if head > 128 else (32, 32, 8)
    return 64, (32 if head > 128 else 64), 4


@triton.jit
def _find_seq(qsl_ptr, pid, num_seqs, BLOCK_Q: tl.constexpr):
    """The last sequence whose first program is at or before `pid`."""
    lo, hi = 0, num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(qsl_ptr + mid) // BLOCK_Q + mid <= pid:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _prefill(q_ptr, kc_ptr, vc_ptr, bt_ptr, qsl_ptr, lens_ptr, o_ptr, scale_log2, num_seqs,
             window, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_bt, s_ot, s_oh,
             GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr,
             HEAD: tl.constexpr, BLOCK_D: tl.constexpr, PAGE: tl.constexpr,
             BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr, SOFT_CAP: tl.constexpr):
    pid, hk = tl.program_id(0), tl.program_id(1)
    seq = _find_seq(qsl_ptr, pid, num_seqs, BLOCK_Q)
    q_start = tl.load(qsl_ptr + seq)
    q_len = tl.load(qsl_ptr + seq + 1) - q_start
    qb = pid - (q_start // BLOCK_Q + seq)
    if qb * BLOCK_Q >= q_len:  # a spare program: the grid is an upper bound
        return
    seq_len = tl.load(lens_ptr + seq)
    prefix = seq_len - q_len
    rows = tl.arange(0, BLOCK_Q * BLOCK_G)
    tok = qb * BLOCK_Q + rows // BLOCK_G  # index among this sequence's new tokens
    head = hk * GROUP + rows % BLOCK_G
    row_mask = (rows % BLOCK_G < GROUP) & (tok < q_len)
    d = tl.arange(0, BLOCK_D)
    rd_mask = row_mask[:, None] & (d < HEAD)[None, :]
    q_off = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + (q_off * s_qt + head * s_qh)[:, None] + d[None, :], mask=rd_mask,
                other=0.0)
    q_pos = prefix + tok  # absolute position: may attend to keys 0..q_pos
    kv_end = tl.minimum(seq_len, prefix + (qb + 1) * BLOCK_Q)
    # with a sliding window, the block's first token sees the earliest key of the block
    kv_start = tl.where(window > 0, tl.maximum(prefix + qb * BLOCK_Q - window + 1, 0), 0)
    m = tl.full([BLOCK_Q * BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_Q * BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_Q * BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(kv_start, kv_end, BLOCK_N):
        kv = n0 + tl.arange(0, BLOCK_N)
        kv_mask = kv < kv_end
        nd_mask = kv_mask[:, None] & (d < HEAD)[None, :]
        k_rows = page_offsets(bt_ptr + seq * s_bt, kv, kv_mask, PAGE, s_kb, s_kt)
        v_rows = page_offsets(bt_ptr + seq * s_bt, kv, kv_mask, PAGE, s_vb, s_vt)
        k = tl.load(kc_ptr + (k_rows + hk * s_kh)[:, None] + d[None, :], mask=nd_mask, other=0.0)
        v = tl.load(vc_ptr + (v_rows + hk * s_vh)[:, None] + d[None, :], mask=nd_mask, other=0.0)
        causal = (kv[None, :] <= q_pos[:, None]) & kv_mask[None, :]
        if window > 0:
            causal &= kv[None, :] > q_pos[:, None] - window
        m, l, acc = attend_tile(q, k, v, causal, m, l, acc, scale_log2, FP32_DOT, SOFT_CAP)
    out = acc / tl.where(l > 0, l, 1.0)[:, None]
    o_ptrs = o_ptr + (q_off * s_ot + head * s_oh)[:, None] + d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=rd_mask)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float,
                            sliding_window: int | None = None,
                            logits_soft_cap: float | None = None) -> torch.Tensor:
    """Causal attention of new tokens q [T, Hq, D] over their sequences' whole cached context.

    Sequence i's new tokens are the last q_len_i of its seq_lens[i] tokens, so earlier context
    (prefix-cache hits, earlier prefill chunks) is read from the cache like the new tokens.
    Sliding window and soft-cap as in reference.paged_prefill_attention.
    """
    num_tokens, q_heads, head = q.shape
    page, kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_seqs = seq_lens.shape[0]
    group = q_heads // kv_heads
    block_g = pow2(group)
    rows, block_n, warps = _tiles(head, q.dtype)
    block_q = max(1, rows // block_g)
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty_like(q)
    grid = (num_tokens // block_q + num_seqs, kv_heads)
    _prefill[grid](q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, out,
                   scale * math.log2(math.e), num_seqs, sliding_window or 0, q.stride(0),
                   q.stride(1),
                   *k_cache.stride()[:3], *v_cache.stride()[:3], block_tables.stride(0),
                   out.stride(0), out.stride(1), GROUP=group, BLOCK_G=block_g, BLOCK_Q=block_q,
                   HEAD=head, BLOCK_D=pow2(head, 16), PAGE=page,
                   BLOCK_N=block_n,
                   FP32_DOT=INTERPRETED or q.dtype == torch.float32,
                   SOFT_CAP=float(logits_soft_cap or 0.0), num_warps=warps)
    return out
