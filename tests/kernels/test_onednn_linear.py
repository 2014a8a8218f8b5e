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


def test_row_counts_above_a_decode_batch_come_in_few_sizes():
    # oneDNN builds (and keeps) a primitive per shape: a server's prefill steps must not
    # bring a new one with nearly every step
    sizes = [onednn.bucket_rows(m) for m in range(1, 4097)]
    assert sizes[:onednn.EXACT_ROWS] == list(range(1, onednn.EXACT_ROWS + 1))
    assert all(m <= s < m * 1.125 for m, s in enumerate(sizes[onednn.EXACT_ROWS:], 65))
    assert sizes == sorted(sizes)
    assert len(set(sizes[onednn.EXACT_ROWS:])) <= 8 * 6  # 8 per doubling, 64 -> 4096


@pytest.mark.parametrize("rows", [65, 100, 333])
def test_padded_row_counts_give_exactly_the_rows_asked_for(rows):
    torch.manual_seed(4)
    qkv, w, b = torch.randn(rows, 768), torch.randn(320, 256), torch.randn(320)
    for x in (qkv[:, :256].contiguous(), qkv[:, 256:512], qkv[:, :256].reshape(1, rows, 256)):
        y = onednn.linear(x, w, b)
        assert y.shape == (*x.shape[:-1], 320)
        torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not onednn.AVAILABLE, reason="torch without oneDNN")
def test_onednn_runs_the_bucketed_row_count():
    x, w = torch.randn(100, 256), torch.randn(320, 256)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                record_shapes=True) as prof:
        onednn.linear(x, w)
    shapes = [e.input_shapes[0] for e in prof.events() if e.name == "mkldnn::_linear_pointwise"]
    assert shapes == [[onednn.bucket_rows(100), 256]] and onednn.bucket_rows(100) == 104


needs_onednn = pytest.mark.skipif(not onednn.AVAILABLE, reason="torch without oneDNN")


@needs_onednn
@pytest.mark.parametrize("rows", [1, 7, 64, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_a_packed_weight_computes_what_the_plain_one_does(rows, with_bias):
    torch.manual_seed(5)
    x, w = torch.randn(rows, 512), torch.randn(640, 512)
    b = torch.randn(640) if with_bias else None
    packed = onednn.pack_linear_weight(w)
    assert packed.is_mkldnn and packed.shape == w.shape
    y = onednn.linear(x, packed, b)
    assert y.shape == (rows, 640) and not y.is_mkldnn
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-4)
    # 3-d inputs and strided views of a fused projection, as the layers pass them
    x3 = torch.randn(2, rows, 1024)[..., 256:768]
    torch.testing.assert_close(onednn.linear(x3, packed), F.linear(x3, w), rtol=1e-5, atol=1e-4)


def test_small_or_not_fp32_weights_stay_plain():
    # below MIN_PACKED MKL's cheaper call wins at a few rows; other dtypes are not oneDNN's here
    for w in (torch.randn(192, 64), torch.randn(512, 511),
              torch.randn(1024, 512, dtype=torch.bfloat16), torch.randn(1024, 512).double()):
        assert onednn.pack_linear_weight(w) is w
    assert torch.randn(512, 512).numel() == onednn.MIN_PACKED


def test_every_backend_has_a_pack_step_and_only_the_cpu_one_repacks():
    w = torch.randn(1024, 512)
    assert reference.pack_linear_weight(w) is w
    assert cpu.pack_linear_weight(w).is_mkldnn == onednn.AVAILABLE
