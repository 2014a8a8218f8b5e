"""Triton paged decode attention equals the torch reference, split-K or not."""
import pytest
import torch

from pagedserve.kernels import reference


def kv_heads(group: int) -> int:
    return 1 if group >= 8 else 2  # few heads: each is a program in the interpreter


def run(kit, triton_ops, seq_lens, page, group, head, dtype, num_splits, cache_dtype=None):
    from pagedserve.kernels.triton_decode import decode_attention
    c = kit.make_paged(seq_lens, page, kv_heads(group), head, cache_dtype or dtype)
    q = torch.randn(len(seq_lens), kv_heads(group) * group, head, device=kit.device).to(dtype)
    scale = head ** -0.5
    out = decode_attention(q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, scale, num_splits)
    ref = reference.paged_attention_decode(q.float(), c.k_cache.float(), c.v_cache.float(),
                                           c.block_tables, c.seq_lens, scale)
    assert out.dtype == dtype
    kit.check_attention("decode", out, ref)


@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("head", [64, 80])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_ragged_contexts_and_gqa(kit, triton_ops, page, head, group, num_splits):
    # a context ending exactly on a block boundary, one past it, a single token, a ragged one
    run(kit, triton_ops, [page, page + 1, 1, 3 * page - 5], page, group, head, torch.float32,
        num_splits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(kit, triton_ops, dtype):
    run(kit, triton_ops, [16, 17, 40], 16, 4, 64, dtype, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_bfloat16_cache_under_other_query_dtypes(kit, triton_ops, dtype):
    # --kv-cache-dtype bfloat16 with a float32 or float16 model
    run(kit, triton_ops, [16, 17, 40], 16, 4, 64, dtype, 3, torch.bfloat16)


def test_more_splits_than_a_short_context_fills(kit, triton_ops):
    # splits past a sequence's end are empty and must weigh nothing in the merge
    run(kit, triton_ops, [3, 200], 16, 4, 64, torch.float32, 4)


def test_public_signature_matches_reference(kit, triton_ops):
    c = kit.make_paged([33, 5], 16, 2, 64)
    q = torch.randn(2, 8, 64, device=kit.device)
    out = triton_ops.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables,
                                            c.seq_lens, 0.125)
    ref = reference.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables,
                                           c.seq_lens, 0.125)
    kit.check_attention("decode", out, ref)


def test_long_context_is_split_to_fill_the_gpu(triton_ops, monkeypatch):
    from pagedserve.kernels import triton_decode
    monkeypatch.setattr(triton_decode, "sm_count", lambda device: 132)  # an H100
    choose = triton_decode.choose_splits
    # one sequence of 32k tokens: enough programs for every SM
    assert choose(1, 8, 32768, 64, "cuda") * 8 >= 132
    # a big batch fills the GPU by itself: little or no splitting
    assert choose(64, 8, 4096, 64, "cuda") <= 2
    # never more splits than KV tiles
    assert choose(1, 1, 100, 64, "cuda") == 2
