"""Triton paged prefill attention equals the torch reference for mixed, chunked batches."""
import pytest
import torch

from pagedserve.kernels import reference


def kv_heads(group: int) -> int:
    return 1 if group >= 8 else 2  # few heads: each is a program in the interpreter


# (tokens already cached, new tokens) per sequence: a fresh prompt, a chunk after exactly one
# full block, a decode token riding along in a mixed batch, a chunk after a ragged prefix
BATCH = [(0, 5), (16, 17), (33, 1), (20, 12)]


def run(kit, triton_ops, batch, page, group, head, dtype):
    seq_lens = [p + n for p, n in batch]
    c = kit.make_paged(seq_lens, page, kv_heads(group), head, dtype)
    q_lens = torch.tensor([n for _, n in batch])
    qsl = torch.zeros(len(batch) + 1, dtype=torch.int32)
    qsl[1:] = q_lens.cumsum(0)
    qsl = qsl.to(kit.device)
    q = torch.randn(int(q_lens.sum()), kv_heads(group) * group, head,
                    device=kit.device).to(dtype)
    scale = head ** -0.5
    out = triton_ops.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                             c.seq_lens, scale)
    ref = reference.paged_prefill_attention(q.float(), c.k_cache.float(), c.v_cache.float(),
                                            c.block_tables, qsl, c.seq_lens, scale)
    assert out.dtype == dtype
    kit.check_attention("prefill", out, ref)


@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("head", [64, 80])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_chunked_prefill_with_cached_prefix(kit, triton_ops, page, head, group):
    run(kit, triton_ops, BATCH, page, group, head, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(kit, triton_ops, dtype):
    run(kit, triton_ops, BATCH, 16, 4, 64, dtype)


def test_query_blocks_spanning_many_sequences(kit, triton_ops):
    # group 8 gives 8-token query blocks: many sequences, several blocks each, some spare
    run(kit, triton_ops, [(0, 9), (3, 8), (0, 1), (40, 23), (7, 2)], 16, 8, 64, torch.float32)


def test_whole_prompt_prefill_is_plain_causal_attention(kit, triton_ops):
    # no cached prefix: the result equals causal attention over the prompt's own K/V
    c = kit.make_paged([20], 16, 2, 64)
    k = c.k_cache[c.block_tables[0, :2].long()].flatten(0, 1)[:20]
    v = c.v_cache[c.block_tables[0, :2].long()].flatten(0, 1)[:20]
    q = torch.randn(20, 8, 64, device=kit.device)
    qsl = torch.tensor([0, 20], dtype=torch.int32, device=kit.device)
    out = triton_ops.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                             c.seq_lens, 0.125)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=0.125,
        enable_gqa=True).transpose(0, 1)
    kit.check_attention("prefill", out, expected)
