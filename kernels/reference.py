"""Plain-torch kernels: the CPU path and the reference every Triton kernel is tested against.

Layouts shared by both backends:
  k_cache / v_cache: [num_blocks, block_size, num_kv_heads, head_size]
  slot_mapping:      int64 [num_tokens], slot = block_id * block_size + offset, -1 = padding
  block_tables:      int32 [num_seqs, max_blocks_per_seq], unused entries are 0
  seq_lens:          int32 [num_seqs], tokens in the cache per sequence, this step's included
  query_start_loc:   int32 [num_seqs + 1], where each sequence's new tokens start in `q`
"""
import torch
import torch.nn.functional as F

from pagedserve.kernels.utils import cdiv


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ weight.T + bias, weight [out_features, in_features] (torch's F.linear)."""
    if weight.is_mkldnn:  # packed by the CPU backend for an engine made earlier in-process
        weight = weight.to_dense()
    return F.linear(x, weight, bias)


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight `linear` runs fastest with, once loaded; here the weight itself (the CPU
    backend repacks it for oneDNN)."""
    return weight


def store_kv_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Write the step's new keys and values [T, Hkv, D] into the paged cache at their slots."""
    if slot_mapping.numel() and int(slot_mapping.min()) < 0:  # padding: keep only real slots
        valid = slot_mapping >= 0
        key, value, slot_mapping = key[valid], value[valid], slot_mapping[valid]
    # a cache of another dtype (--kv-cache-dtype) stores them rounded to it
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def _gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """[num_seqs, max_len, Hkv, D] view of each sequence's cached tokens (padded)."""
    num_blocks = cdiv(max_len, cache.shape[1])
    return cache[block_tables[:, :num_blocks].long()].flatten(1, 2)[:, :max_len]


def _widen(kv: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    # a cache kept in another dtype (--kv-cache-dtype) is attended to in the queries' dtype
    return kv if kv.dtype == q.dtype else kv.to(q.dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
            logits_soft_cap: float | None) -> torch.Tensor:
    """softmax(q k^T * scale) v over [B, H, Q, D] tensors; GQA by head groups. Soft-capping
    (cap * tanh(s / cap), Gemma 2) has no SDPA form, so it takes the explicit path."""
    if not logits_soft_cap:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=True)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    s = torch.tanh(s / logits_soft_cap) * logits_soft_cap
    s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def _visible(q_pos: torch.Tensor, max_kv: int, sliding_window: int | None) -> torch.Tensor:
    """[..., max_kv] mask of the keys a query at q_pos sees: causal, and with a sliding
    window of W only the last W positions (its own included), as transformers masks them."""
    kv = torch.arange(max_kv, device=q_pos.device)
    mask = kv <= q_pos[..., None]
    if sliding_window:
        mask &= kv > q_pos[..., None] - sliding_window
    return mask


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float,
                            sliding_window: int | None = None,
                            logits_soft_cap: float | None = None) -> torch.Tensor:
    """Causal attention of new tokens q [T, Hq, D] over their sequences' whole cached context.

    Sequence i's new tokens are the last q_len_i of its seq_lens[i] tokens, so earlier context
    (prefix-cache hits, earlier prefill chunks) is read from the cache like the new tokens.
    sliding_window W: a token sees only the W latest positions up to its own; logits_soft_cap
    c: scores become c * tanh(score / c) before the softmax.
    """
    num_seqs = seq_lens.numel()
    q_lens = (query_start_loc[1:] - query_start_loc[:-1]).long()
    max_q, max_kv = int(q_lens.max()), int(seq_lens.max())
    seq_of_token = torch.repeat_interleave(torch.arange(num_seqs, device=q.device), q_lens)
    offset = torch.arange(q.shape[0], device=q.device) - query_start_loc[seq_of_token].long()
    qp = q.new_zeros(num_seqs, max_q, *q.shape[1:])
    qp[seq_of_token, offset] = q
    q_pos = (seq_lens.long() - q_lens)[:, None] + torch.arange(max_q, device=q.device)
    mask = _visible(q_pos, max_kv, sliding_window)
    k = _widen(_gather_kv(k_cache, block_tables, max_kv), q).transpose(1, 2)
    v = _widen(_gather_kv(v_cache, block_tables, max_kv), q).transpose(1, 2)
    out = _attend(qp.transpose(1, 2), k, v, mask[:, None], scale, logits_soft_cap)
    return out.transpose(1, 2)[seq_of_token, offset]


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None,
                           logits_soft_cap: float | None = None) -> torch.Tensor:
    """One query token per sequence, q [B, Hq, D], over seq_lens[i] cached tokens (the
    window and soft-cap as in paged_prefill_attention)."""
    max_kv = int(seq_lens.max())
    mask = _visible(seq_lens.long() - 1, max_kv, sliding_window)
    k = _widen(_gather_kv(k_cache, block_tables, max_kv), q).transpose(1, 2)
    v = _widen(_gather_kv(v_cache, block_tables, max_kv), q).transpose(1, 2)
    out = _attend(q[:, :, None], k, v, mask[:, None, None], scale, logits_soft_cap)
    return out[:, :, 0]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None):
    """RMSNorm in fp32; with `residual`, adds it first and returns (normed, new_residual)."""
    if residual is not None:
        x = x + residual
        residual = x
    if x.dtype == torch.float32:  # one fused op, bit-identical to the steps below in fp32
        out = F.rms_norm(x, (x.shape[-1],), weight, eps)
    else:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    return out if residual is None else (out, residual)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> None:
    """Neox-style rotary embedding applied in place to q [T, Hq, D] and k [T, Hkv, D].

    cos_sin_cache: [max_position, D] fp32, cos in the first half and sin in the second.
    """
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    for x in (q, k):
        if x.dtype == torch.float32:  # rotate the two halves in place, no upcast copies
            x1, x2 = x.chunk(2, dim=-1)
            x1_sin, x2_sin = x1 * sin, x2 * sin
            x1.mul_(cos).sub_(x2_sin)
            x2.mul_(cos).add_(x1_sin)
            continue
        x1, x2 = x.float().chunk(2, dim=-1)
        x.copy_(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: silu(x[..., :d]) * x[..., d:] for x [..., 2d]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """Mixture-of-experts MLP: sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]).

    x [T, H]; w13 [E, 2I, H] (gate rows, then up rows); w2 [E, H, I]; topk_* [T, K]. Each
    expert is a SwiGLU MLP. The T*K (token, expert) pairs are sorted by expert, so each
    expert runs one matmul over all of its tokens (a loop over experts, not tokens).
    """
    num_tokens, top_k = topk_ids.shape
    flat = topk_ids.flatten()
    order = flat.argsort(stable=True)
    token = order // top_k
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    xs = x[token]
    out = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n:
            h = silu_and_mul(F.linear(xs[start:start + n], w13[e]))
            out[start:start + n] = F.linear(h, w2[e])
            start += n
    out *= topk_weights.flatten()[order, None].to(out.dtype)
    # summed per token in expert order (index_add_ keeps the sorted order)
    return torch.zeros_like(x).index_add_(0, token, out)
