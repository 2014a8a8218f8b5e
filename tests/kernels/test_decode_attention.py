"""Triton paged decode attention equals the torch reference, split-K or not."""
import pytest
import torch

from pagedserve.kernels import reference

Q_HEADS = 8


def run(kit, triton_ops, seq_lens, page, group, head, dtype, num_splits):
    from pagedserve.kernels.triton_decode import decode_attention
    c = kit.make_paged(seq_lens, page, Q_HEADS // group, head, dtype)
    q = torch.randn(len(seq_lens), Q_HEADS, head, device=kit.device).to(dtype)
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
