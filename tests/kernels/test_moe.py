"""Fused MoE: the torch reference (tokens grouped per expert) against a per-token loop over
the definition, and the Triton grouped GEMM against the reference (interpreted on CPU)."""
import pytest
import torch
import torch.nn.functional as F

from pagedserve.engine.layers.moe import select_experts
from pagedserve.kernels import reference

# (tokens, hidden, intermediate, experts, top_k): a decode-sized batch, ragged sizes that
# fill no tile exactly, more experts than tokens (most get none)
SHAPES = [(3, 32, 64, 4, 2), (37, 48, 40, 8, 2), (5, 32, 32, 16, 4)]


def inputs(tokens, hidden, inter, experts, top_k, device="cpu", dtype=torch.float32):
    x = torch.randn(tokens, hidden, device=device)
    w13 = torch.randn(experts, 2 * inter, hidden, device=device) / hidden ** 0.5
    w2 = torch.randn(experts, hidden, inter, device=device) / inter ** 0.5
    weights, ids = select_experts(torch.randn(tokens, experts, device=device), top_k, True)
    return x.to(dtype), w13.to(dtype), w2.to(dtype), weights, ids


def per_token(x, w13, w2, weights, ids):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), ids[t].tolist()):
            gate, up = F.linear(x[t], w13[e]).chunk(2)
            out[t] += w * F.linear(F.silu(gate) * up, w2[e])
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_equals_the_definition(shape):
    args = inputs(*shape)
    torch.testing.assert_close(reference.fused_moe(*args), per_token(*args), atol=1e-5,
                               rtol=1e-5)


def test_router_renormalizes_only_when_asked():
    logits = torch.randn(6, 8)
    raw, ids = select_experts(logits, 2, False)
    torch.testing.assert_close(raw, logits.softmax(-1).gather(1, ids))
    normed, ids2 = select_experts(logits, 2, True)
    assert torch.equal(ids, ids2)
    torch.testing.assert_close(normed.sum(-1), torch.ones(6))


@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(kit, shape):
    pytest.importorskip("triton")
    from pagedserve.kernels import triton_moe
    args = inputs(*shape, device=kit.device)
    out = triton_moe.fused_moe(*args)
    kit.check_attention("fused_moe", out, reference.fused_moe(*args))


def test_triton_half_precision(kit):
    pytest.importorskip("triton")
    from pagedserve.kernels import triton_moe
    args = inputs(9, 32, 32, 4, 2, device=kit.device, dtype=torch.bfloat16)
    out = triton_moe.fused_moe(*args)
    ref = reference.fused_moe(*(a.float() if a.is_floating_point() else a for a in args))
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max().item()
    assert err <= 5e-2 * ref.abs().max().item(), err
