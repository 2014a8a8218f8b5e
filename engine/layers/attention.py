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


class Attention(nn.Module):
    """Stores this step's K/V in the layer's cache, then attends to the cache in place."""

    def __init__(self, num_heads: int, head_size: int, num_kv_heads: int, scale: float) -> None:
        super().__init__()
        self.num_heads, self.head_size, self.num_kv_heads = num_heads, head_size, num_kv_heads
        self.scale = scale
        self.k_cache = self.v_cache = torch.empty(0)  # bound by the model runner

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        kernels.store_kv_cache(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        if meta.max_query_len == 1:
            return kernels.paged_attention_decode(q, self.k_cache, self.v_cache, meta.block_tables,
                                                  meta.seq_lens, self.scale)
        d = meta.num_decodes
        if d == 0:
            return kernels.paged_prefill_attention(q, self.k_cache, self.v_cache,
                                                   meta.block_tables, meta.query_start_loc,
                                                   meta.seq_lens, self.scale)
        # a mixed step: the decodes' single tokens come first, the prefills after them
        out = torch.empty_like(q)
        out[:d] = kernels.paged_attention_decode(q[:d], self.k_cache, self.v_cache,
                                                 meta.block_tables[:d], meta.seq_lens[:d],
                                                 self.scale)
        out[d:] = kernels.paged_prefill_attention(q[d:], self.k_cache, self.v_cache,
                                                  meta.block_tables[d:],
                                                  meta.query_start_loc[d:] - d,
                                                  meta.seq_lens[d:], self.scale)
        return out
