"""The CPU backend's linear layers (oneDNN) compute what F.linear computes."""
import pytest
import torch
import torch.nn.functional as F

from pagedserve import kernels
from pagedserve.kernels import cpu, onednn, reference


def ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


# (rows, in, out): 64 x 256 x 320 is above MIN_WORK, so oneDNN runs; sums of 256 products
# of unit normals (~16 in size) in another order differ by ~1e-5
@pytest.mark.parametrize("shape", [(64, 256), (4, 16, 256)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_torch_linear(shape, with_bias):
    torch.manual_seed(0)
    x, w = torch.randn(*shape), torch.randn(320, 256)
    b = torch.randn(320) if with_bias else None
    y = onednn.linear(x, w, b)
    assert y.shape == (*shape[:-1], 320) and y.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    if onednn.AVAILABLE:
        assert "mkldnn::_linear_pointwise" in ops_run(lambda: onednn.linear(x, w, b))


@pytest.mark.parametrize("shape", [(1, 48), (64, 48), (0, 256)])
def test_small_products_stay_on_torch_linear(shape):
    # oneDNN's larger per-call cost loses below MIN_WORK multiply-adds
    torch.manual_seed(3)
    x, w = torch.randn(*shape), torch.randn(40, shape[1])
    assert torch.equal(onednn.linear(x, w), F.linear(x, w))
    assert "mkldnn::_linear_pointwise" not in ops_run(lambda: onednn.linear(x, w))


def test_a_strided_view_of_a_fused_projection_is_read_correctly():
    torch.manual_seed(1)
    qkv, w = torch.randn(64, 768), torch.randn(320, 256)
    x = qkv[:, 256:512]  # not contiguous: rows are 768 apart
    torch.testing.assert_close(onednn.linear(x, w), F.linear(x.contiguous(), w),
                               rtol=1e-5, atol=1e-4)


def test_other_dtypes_are_torch_linear_exactly():
    torch.manual_seed(2)
    x, w = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(8, 16, dtype=torch.bfloat16)
    assert torch.equal(onednn.linear(x, w), F.linear(x, w))
    x, w = x.double(), w.double()
    assert torch.equal(onednn.linear(x, w), F.linear(x, w))


def test_the_fast_path_is_on_wherever_torch_has_onednn():
    # a torch upgrade that drops or changes the private op must fail here, not silently slow
    assert onednn.AVAILABLE == torch.backends.mkldnn.is_available()


def test_the_cpu_backend_routes_linear_layers_through_onednn():
    try:
        if kernels.select_backend("cpu") == "cpu":
            assert kernels.linear is cpu.linear is onednn.linear
        assert kernels.select_backend("cpu", "torch") == "torch"
        assert kernels.linear is reference.linear
    finally:
        kernels.select_backend("cpu", "torch")
