"""Sliding-window attention and logit soft-capping: the torch reference against attention
over exactly the visible keys, and every other backend (compiled C, Triton) against it."""
import math
import shutil

import pytest
import torch

from pagedserve.kernels import cpu, reference

needs_cc = pytest.mark.skipif(shutil.which(cpu.COMPILER) is None, reason="no C compiler")
# (tokens already cached, new tokens): a fresh prompt longer than the windows, a decode token
# riding along, a chunk after a long cached prefix, a short chunk after a ragged prefix
BATCH = [(0, 37), (40, 1), (50, 20), (21, 3)]
SEQ_LENS = [1, 9, 16, 17, 64, 70]


def qsl_of(batch) -> torch.Tensor:
    qsl = torch.zeros(len(batch) + 1, dtype=torch.int32)
    qsl[1:] = torch.tensor([n for _, n in batch]).cumsum(0)
    return qsl


def cached_kv(c, seq: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = c.block_tables[seq].long()
    k = c.k_cache[blocks].flatten(0, 1)[:length]
    v = c.v_cache[blocks].flatten(0, 1)[:length]
    return k, v


def explicit_attention(q, k, v, scale, cap=None):
    """q [H, D] over exactly the keys given (k, v [N, Hkv, D]), scores capped by hand."""
    group = q.shape[0] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.einsum("hd,nhd->hn", q, k) * scale
    if cap:
        s = cap * torch.tanh(s / cap)
    return torch.einsum("hn,nhd->hd", s.softmax(-1), v)


@pytest.mark.parametrize("cap", [None, 2.0])
@pytest.mark.parametrize("window", [1, 5, 16])
def test_reference_sees_only_the_window(cpu_kit, window, cap):
    c = cpu_kit.make_paged([p + n for p, n in BATCH], 16, 2, 32)
    q = torch.randn(sum(n for _, n in BATCH), 4, 32)
    qsl = qsl_of(BATCH)
    out = reference.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                            c.seq_lens, 0.3, window, cap)
    for i, (prefix, new) in enumerate(BATCH):
        for j in range(new):
            pos = prefix + j
            k, v = cached_kv(c, i, pos + 1)
            lo = max(0, pos - window + 1)
            want = explicit_attention(q[qsl[i] + j], k[lo:], v[lo:], 0.3, cap)
            torch.testing.assert_close(out[qsl[i] + j], want, atol=1e-5, rtol=1e-5)


def test_decode_reference_equals_prefill_of_the_last_token(cpu_kit):
    c = cpu_kit.make_paged(SEQ_LENS, 16, 2, 32)
    q = torch.randn(len(SEQ_LENS), 4, 32)
    qsl = torch.arange(len(SEQ_LENS) + 1, dtype=torch.int32)
    for window, cap in [(7, None), (16, 3.0), (100, None)]:
        dec = reference.paged_attention_decode(q, c.k_cache, c.v_cache, c.block_tables,
                                               c.seq_lens, 0.2, window, cap)
        pre = reference.paged_prefill_attention(q, c.k_cache, c.v_cache, c.block_tables, qsl,
                                                c.seq_lens, 0.2, window, cap)
        torch.testing.assert_close(dec, pre, atol=1e-6, rtol=1e-6)


def test_a_window_as_long_as_the_context_changes_nothing(cpu_kit):
    c = cpu_kit.make_paged(SEQ_LENS, 16, 2, 32)
    q = torch.randn(len(SEQ_LENS), 4, 32)
    args = (q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.2)
    torch.testing.assert_close(reference.paged_attention_decode(*args, max(SEQ_LENS)),
                               reference.paged_attention_decode(*args), atol=1e-6, rtol=1e-6)


@needs_cc
@pytest.mark.parametrize("cap", [None, 4.0])
@pytest.mark.parametrize("window", [1, 6, 16, 65])
@pytest.mark.parametrize("kv_heads,group", [(2, 1), (1, 8)])
def test_cpu_kernel_matches_reference(cpu_kit, window, cap, kv_heads, group):
    head = 16
    c = cpu_kit.make_paged([p + n for p, n in BATCH], 16, kv_heads, head)
    q = torch.randn(sum(n for _, n in BATCH), kv_heads * group, head)
    qsl = qsl_of(BATCH)
    args = (q, c.k_cache, c.v_cache, c.block_tables, qsl, c.seq_lens, head ** -0.5, window, cap)
    out = cpu.paged_prefill_attention(*args)
    torch.testing.assert_close(out, reference.paged_prefill_attention(*args), atol=1e-5,
                               rtol=1e-5)
    d = cpu_kit.make_paged(SEQ_LENS, 16, kv_heads, head)
    qd = torch.randn(len(SEQ_LENS), kv_heads * group, head)
    dargs = (qd, d.k_cache, d.v_cache, d.block_tables, d.seq_lens, head ** -0.5, window, cap)
    torch.testing.assert_close(cpu.paged_attention_decode(*dargs),
                               reference.paged_attention_decode(*dargs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cap", [None, 4.0])
@pytest.mark.parametrize("window", [1, 6, 40])
def test_triton_prefill_matches_reference(kit, triton_ops, window, cap):
    c = kit.make_paged([p + n for p, n in BATCH], 16, 2, 16)
    q = torch.randn(sum(n for _, n in BATCH), 8, 16, device=kit.device)
    qsl = qsl_of(BATCH).to(kit.device)
    args = (q, c.k_cache, c.v_cache, c.block_tables, qsl, c.seq_lens, 0.25, window, cap)
    kit.check_attention("prefill window", triton_ops.paged_prefill_attention(*args),
                        reference.paged_prefill_attention(*args))


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("window,cap", [(1, None), (20, 4.0), (33, None)])
def test_triton_decode_matches_reference(kit, triton_ops, window, cap, splits):
    """With several splits some lie wholly before the window: they must weigh nothing."""
    from pagedserve.kernels.triton_decode import decode_attention
    c = kit.make_paged(SEQ_LENS, 16, 2, 16)
    q = torch.randn(len(SEQ_LENS), 4, 16, device=kit.device)
    args = (q, c.k_cache, c.v_cache, c.block_tables, c.seq_lens, 0.25)
    out = decode_attention(*args, splits, window, cap)
    kit.check_attention("decode window", out, reference.paged_attention_decode(*args, window,
                                                                                cap))
    assert not math.isnan(out.sum().item())
