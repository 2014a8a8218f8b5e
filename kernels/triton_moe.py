"""Triton fused MoE: a grouped GEMM over (token, expert) pairs sorted by expert.

The T*K pairs are sorted by expert and each expert's run padded to BLOCK_M rows, so every
row block belongs to one expert; all of it is computed on the device (no host sync), with
the padded length bounded by T*K + E*(BLOCK_M - 1). Two kernels: gate/up projections with
SwiGLU fused in, then the down projection scaled by the pair's router weight; the K
weighted outputs of a token are summed last. Same signature as reference.fused_moe.
"""
import torch
import triton
import triton.language as tl

from pagedserve.kernels.triton_utils import INTERPRETED

BLOCK_M = 16


@triton.jit
def _gate_up(x_ptr, w_ptr, out_ptr, pair_ptr, block_expert_ptr, num_pairs, top_k, hidden,
             inter, s_xt, s_we, s_wn, s_ot, NUM_EXPERTS: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
             FP32_DOT: tl.constexpr):
    mb, nb = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + mb)
    if expert >= NUM_EXPERTS:  # past the last expert's blocks: the grid is an upper bound
        return
    rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pair_ptr + rows)
    valid = pair < num_pairs
    token = (pair // top_k).to(tl.int64)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < inter
    w = w_ptr + expert.to(tl.int64) * s_we
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < hidden
        a = tl.load(x_ptr + token[:, None] * s_xt + k[None, :],
                    mask=valid[:, None] & k_mask[None, :], other=0.0)
        wm = k_mask[:, None] & n_mask[None, :]
        wg = tl.load(w + n[None, :] * s_wn + k[:, None], mask=wm, other=0.0)
        wu = tl.load(w + (n[None, :] + inter) * s_wn + k[:, None], mask=wm, other=0.0)
        if FP32_DOT:
            a = a.to(tl.float32)
            gate += tl.dot(a, wg.to(tl.float32), input_precision="ieee")
            up += tl.dot(a, wu.to(tl.float32), input_precision="ieee")
        else:
            gate += tl.dot(a, wg)
            up += tl.dot(a, wu)
    h = gate / (1.0 + tl.exp(-gate)) * up
    o = out_ptr + rows.to(tl.int64)[:, None] * s_ot + n[None, :]
    tl.store(o, h.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _down(h_ptr, w_ptr, out_ptr, pair_ptr, block_expert_ptr, weight_ptr, num_pairs, hidden,
          inter, s_ht, s_we, s_wn, s_ot, NUM_EXPERTS: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP32_DOT: tl.constexpr):
    mb, nb = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + mb)
    if expert >= NUM_EXPERTS:
        return
    rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(pair_ptr + rows)
    valid = pair < num_pairs
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < hidden
    w = w_ptr + expert.to(tl.int64) * s_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < inter
        a = tl.load(h_ptr + rows.to(tl.int64)[:, None] * s_ht + k[None, :],
                    mask=valid[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w + n[None, :] * s_wn + k[:, None], mask=k_mask[:, None] & n_mask[None, :],
                    other=0.0)
        if FP32_DOT:
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    acc *= tl.load(weight_ptr + pair, mask=valid, other=0.0)[:, None]
    o = out_ptr + pair.to(tl.int64)[:, None] * s_ot + n[None, :]
    tl.store(o, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


def align_pairs(topk_ids: torch.Tensor, num_experts: int,
                block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair index per padded row, T*K for padding; expert per row block, E past the end)."""
    flat = topk_ids.flatten().long()
    num_pairs = flat.numel()
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    padded = -(-counts // block_m) * block_m
    starts, padded_starts = counts.cumsum(0) - counts, padded.cumsum(0) - padded
    expert = flat[order]
    dest = padded_starts[expert] + torch.arange(num_pairs, device=flat.device) - starts[expert]
    bound = num_pairs + num_experts * (block_m - 1)
    bound = -(-bound // block_m) * block_m
    rows = torch.full((bound,), num_pairs, dtype=torch.int32, device=flat.device)
    rows[dest] = order.to(torch.int32)
    block_start = torch.arange(0, bound, block_m, device=flat.device)
    block_expert = torch.searchsorted(padded.cumsum(0), block_start, right=True)
    return rows, block_expert.to(torch.int32)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Same contract as reference.fused_moe."""
    num_tokens, hidden = x.shape
    num_experts, inter = w13.shape[0], w2.shape[2]
    top_k = topk_ids.shape[1]
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    rows, block_expert = align_pairs(topk_ids, num_experts, BLOCK_M)
    h = torch.empty(rows.numel(), inter, dtype=x.dtype, device=x.device)
    pairs = torch.empty(num_tokens * top_k, hidden, dtype=x.dtype, device=x.device)
    fp32 = INTERPRETED or x.dtype == torch.float32
    common = dict(NUM_EXPERTS=num_experts, BLOCK_M=BLOCK_M, BLOCK_N=32, BLOCK_K=32,
                  FP32_DOT=fp32)
    m_blocks = rows.numel() // BLOCK_M
    _gate_up[(m_blocks, triton.cdiv(inter, 32))](
        x, w13, h, rows, block_expert, num_tokens * top_k, top_k, hidden, inter, x.stride(0),
        w13.stride(0), w13.stride(1), h.stride(0), **common)
    weights = topk_weights.flatten().float().contiguous()
    _down[(m_blocks, triton.cdiv(hidden, 32))](
        h, w2, pairs, rows, block_expert, weights, num_tokens * top_k, hidden, inter,
        h.stride(0), w2.stride(0), w2.stride(1), pairs.stride(0), **common)
    return pairs.view(num_tokens, top_k, hidden).sum(1)
