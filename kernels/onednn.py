"""fp32 linear layers on CPUs through oneDNN instead of torch's default BLAS (MKL).

Measured on an AMD EPYC (AVX-512) with torch 2.13, two threads, the ~100M benchmark model's
five weight shapes: MKL's sgemm took 51-89 ms for all of them at 64 rows, oneDNN 26-43 ms;
at one row 11 vs 5 ms (MKL picks slow code paths on CPUs that are not Intel's, and its second
thread barely helps at these sizes). oneDNN sees the same OpenMP thread pool, so
torch.set_num_threads still governs it.

Weights big enough are repacked once, after loading, into oneDNN's blocked layout
(`pack_linear_weight`): a plain weight is reordered by every call, which at decode's few rows
costs as much as the multiply. Measured on an AMD EPYC, two threads, the ~100M model's 14
layers of weights (400 MB, so read from memory every step), 64 rows: 113-120 ms a step plain,
88-89 ms packed; every weight shape of the ~20M and ~100M models was as fast or faster packed
at 1 to 1024 rows. The packed tensor replaces the plain one: memory stays the same.
"""
import torch
import torch.nn.functional as F

# Row counts above this are rounded up (8 sizes per doubling): oneDNN builds a primitive per
# input shape (~0.5-1 ms, and ~0.5 MiB kept) and caches 1024. A server's prefill steps bring
# a new row count nearly every time, so without buckets it built primitives for ever: linear
# calls at 300 such counts took 1.6x as long, cache full, as when they were cached. It is also
# the row count packed weights are laid out for (1 to 1024 rows ran as fast with it as with
# their own count).
EXACT_ROWS = 64


def _probe() -> bool:
    # the op is private to torch (its compiler's CPU lowering calls it), so check it runs
    # and agrees with F.linear before trusting it
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        packed = torch.ops.mkldnn._reorder_linear_weight(w, EXACT_ROWS)
        y_packed = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    want = F.linear(x, w, b)
    return torch.allclose(y, want, atol=1e-5) and torch.allclose(y_packed, want, atol=1e-5)


AVAILABLE = _probe()
# multiply-adds below which MKL's lower per-call cost wins: oneDNN's call costs ~20-35 us
# more (stories260K's 64-wide layers ran 1.2-4x slower through it); at 64 x 512 x 512 it is
# 1.46x faster, at 16 x 512 x 512 (4.2M) 0.84x, at 64 x 256 x 256 (4.2M) 1.06x
MIN_WORK = 1 << 22

# weights with fewer elements stay plain, for MKL: at a few rows its call costs ~5 us where
# oneDNN's costs ~20, packed or not (stories260K's 64 x 192 qkv); from 512 x 512 up packed
# oneDNN was as fast as MKL at one row and faster from 4
MIN_PACKED = 1 << 18


def bucket_rows(rows: int) -> int:
    """The row count oneDNN runs for `rows`: itself up to EXACT_ROWS (decode batches),
    else rounded up to a multiple of a sixteenth of the next power of two (< 12.5 % more)."""
    if rows <= EXACT_ROWS:
        return rows
    step = 1 << ((rows - 1).bit_length() - 4)
    return -(-rows // step) * step


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows, k = x.numel() // x.shape[-1], x.shape[-1]
    padded = bucket_rows(rows)
    if padded == rows:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    buf = x.new_zeros(padded, k)
    buf[:rows] = x.reshape(rows, k)
    y = torch.ops.mkldnn._linear_pointwise(buf, weight, bias, "none", [], "")[:rows]
    return y.reshape(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Same as F.linear; oneDNN's matmul for fp32 CPU tensors big enough to gain from it,
    when this torch has it, and always for a weight from `pack_linear_weight`."""
    if weight.is_mkldnn:
        return _onednn(x, weight, bias)
    if (AVAILABLE and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and x.numel() // weight.shape[1] * weight.numel() >= MIN_WORK):
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` in oneDNN's blocked layout, for `linear`, where that pays (fp32 on the CPU, at
    least MIN_PACKED elements, oneDNN available); otherwise `weight` itself."""
    if (AVAILABLE and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and weight.dim() == 2 and weight.numel() >= MIN_PACKED):
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), EXACT_ROWS)
    return weight
