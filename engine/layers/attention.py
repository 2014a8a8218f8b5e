"""Paged attention over the KV cache, for a flat batch mixing prefills and decodes."""
from dataclasses import dataclass

import torch
from torch import nn

from pagedserve import kernels


@dataclass(slots=True)
class AttentionMetadata:
    """Per-step batch layout, built once by the model runner and shared by every layer."""
    slot_mapping: torch.Tensor  # [num_tokens] int64
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    max_query_len: int
    num_decodes: int = 0  # the first num_decodes sequences have one new token each
    # >0: decode attention runs over chunks of this many sequences (sorted by length, so each
    # chunk pads only to its own longest): for the torch reference, which copies every
    # sequence's KV padded to the longest, this copies less and keeps it cache-sized
    decode_chunk: int = 0


class Attention(nn.Module):
    """Stores this step's K/V in the layer's cache, then attends to the cache in place."""

    def __init__(self, num_heads: int, head_size: int, num_kv_heads: int, scale: float,
                 sliding_window: int | None = None,
                 logits_soft_cap: float | None = None) -> None:
        super().__init__()
        self.num_heads, self.head_size, self.num_kv_heads = num_heads, head_size, num_kv_heads
        self.scale = scale
        # every kernel takes both; None keeps the plain causal, uncapped attention
        self.extra = (sliding_window, logits_soft_cap)
        self.k_cache = self.v_cache = torch.empty(0)  # bound by the model runner

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        kernels.store_kv_cache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        num_seqs = meta.seq_lens.shape[0]
        d = num_seqs if meta.max_query_len == 1 else meta.num_decodes
        if d == num_seqs:
            return self._decode(q, meta.block_tables, meta.seq_lens, meta.decode_chunk)
        if d == 0:
            return kernels.paged_prefill_attention(q, self.k_cache, self.v_cache,
                                                   meta.block_tables, meta.query_start_loc,
                                                   meta.seq_lens, self.scale, *self.extra)
        # a mixed step: the decodes' single tokens come first, the prefills after them
        out = torch.empty_like(q)
        out[:d] = self._decode(q[:d], meta.block_tables[:d], meta.seq_lens[:d], meta.decode_chunk)
        out[d:] = kernels.paged_prefill_attention(q[d:], self.k_cache, self.v_cache,
                                                  meta.block_tables[d:],
                                                  meta.query_start_loc[d:] - d,
                                                  meta.seq_lens[d:], self.scale, *self.extra)
        return out

    def _decode(self, q: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                chunk: int) -> torch.Tensor:
        if not chunk or q.shape[0] <= chunk:
            return kernels.paged_attention_decode(q, self.k_cache, self.v_cache, block_tables,
                                                  seq_lens, self.scale, *self.extra)
        out = torch.empty_like(q)
        for s in range(0, q.shape[0], chunk):
            out[s:s + chunk] = kernels.paged_attention_decode(
                q[s:s + chunk], self.k_cache, self.v_cache, block_tables[s:s + chunk],
                seq_lens[s:s + chunk], self.scale, *self.extra)
        return out
