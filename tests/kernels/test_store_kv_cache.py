"""Triton store_kv_cache writes exactly what the reference writes, and skips padding."""
import pytest
import torch

from pagedserve.kernels import reference


@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_and_skips_padding(kit, triton_ops, page, dtype):
    num_blocks, heads, head = 4, 2, 80
    cache = torch.randn(2, num_blocks, page, heads, head, device=kit.device).to(dtype)
    # first and last slot of a block, a padding token (-1), slots in shuffled blocks
    slots = torch.tensor([0, page - 1, -1, page, 3 * page + 5, 2 * page + page - 1],
                         device=kit.device)
    key = torch.randn(len(slots), heads, head, device=kit.device).to(dtype)
    value = torch.randn(len(slots), heads, head, device=kit.device).to(dtype)
    expected = cache.clone()
    reference.store_kv_cache(key, value, expected[0], expected[1], slots)
    triton_ops.store_kv_cache(key, value, cache[0], cache[1], slots)
    assert torch.equal(cache, expected)
    flat_k = cache[0].view(-1, heads, head)
    assert torch.equal(flat_k[slots[slots >= 0]], key[slots >= 0])


def test_strided_key_and_value(kit, triton_ops):
    # K and V sliced out of a fused projection output: rows are not contiguous
    qkv = torch.randn(3, 4 * 64, device=kit.device)
    key = qkv[:, 128:192].view(3, 1, 64)
    value = qkv[:, 192:].view(3, 1, 64)
    k_cache = torch.zeros(2, 16, 1, 64, device=kit.device)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([17, 2, 31], device=kit.device)
    triton_ops.store_kv_cache(key, value, k_cache, v_cache, slots)
    assert torch.equal(k_cache.view(-1, 1, 64)[slots], key)
    assert torch.equal(v_cache.view(-1, 1, 64)[slots], value)
