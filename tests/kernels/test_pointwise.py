"""Triton RMSNorm (+ residual), rotary embedding and SiLU-and-mul equal the torch reference."""
import pytest
import torch

from pagedserve.kernels import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(kit, triton_ops, dtype):
    x = torch.randn(5, 96, device=kit.device).to(dtype)
    w = torch.randn(96, device=kit.device).to(dtype)
    kit.check_pointwise("rms_norm", triton_ops.rms_norm(x, w, 1e-5),
                        reference.rms_norm(x, w, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_with_residual(kit, triton_ops, dtype):
    x = torch.randn(5, 96, device=kit.device).to(dtype)
    res = torch.randn(5, 96, device=kit.device).to(dtype)
    w = torch.randn(96, device=kit.device).to(dtype)
    before = x.clone(), res.clone()
    out, new_res = triton_ops.rms_norm(x, w, 1e-6, res)
    ref_out, ref_res = reference.rms_norm(x, w, 1e-6, res)
    kit.check_pointwise("rms_norm+residual", out, ref_out)
    kit.check_pointwise("rms_norm+residual", new_res, ref_res)
    assert torch.equal(x, before[0]) and torch.equal(res, before[1])  # inputs untouched


def test_rms_norm_per_head_on_strided_view(kit, triton_ops):
    # Qwen3's q/k norm: [T, H, D] heads viewed out of the fused qkv projection
    qkv = torch.randn(3, 4 * 16 + 2 * 2 * 16, device=kit.device)
    q = qkv[:, :64].reshape(3, 4, 16)
    w = torch.randn(16, device=kit.device)
    kit.check_pointwise("rms_norm", triton_ops.rms_norm(q, w, 1e-6),
                        reference.rms_norm(q, w, 1e-6))


@pytest.mark.parametrize("head", [64, 80])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_in_place(kit, triton_ops, head, dtype):
    freqs = torch.outer(torch.arange(64.0), 1e4 ** (-torch.arange(0, head, 2) / head))
    cos_sin = torch.cat((freqs.cos(), freqs.sin()), -1).to(kit.device)
    positions = torch.tensor([0, 5, 63, 7], device=kit.device)
    q = torch.randn(4, 8, head, device=kit.device).to(dtype)
    k = torch.randn(4, 2, head, device=kit.device).to(dtype)
    q_ref, k_ref = q.clone(), k.clone()
    reference.rotary_embedding(positions, q_ref, k_ref, cos_sin)
    assert triton_ops.rotary_embedding(positions, q, k, cos_sin) is None
    kit.check_pointwise("rotary", q, q_ref)
    kit.check_pointwise("rotary", k, k_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(kit, triton_ops, dtype):
    x = torch.randn(2, 3, 2 * 1100, device=kit.device).to(dtype)  # d spans two program tiles
    kit.check_pointwise("silu_and_mul", triton_ops.silu_and_mul(x), reference.silu_and_mul(x))
