"""Small helpers shared by the Triton kernels (imported only when Triton is in use)."""
import functools

import torch
import triton
import triton.language as tl

from pagedserve.kernels.backend import interpreting

# Whether @triton.jit made interpreted kernels (decided, like here, when the kernel modules
# were imported). Kernels then cast `tl.dot` operands to fp32: the interpreter's
# half-precision dot is unreliable.
INTERPRETED = interpreting()
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


def pow2(n: int, floor: int = 1) -> int:
    """Tile width for n elements: a power of two (Triton needs them), at least `floor`."""
    return max(floor, triton.next_power_of_2(n))


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors (CUs on ROCm) to fill; a nominal 4 for the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def page_offsets(bt_row_ptr, tok, tok_mask, PAGE: tl.constexpr, stride_block, stride_tok):
    """Element offsets of cache rows for token positions `tok`, through one block table row."""
    block = tl.load(bt_row_ptr + tok // PAGE, mask=tok_mask, other=0).to(tl.int64)
    return block * stride_block + (tok % PAGE) * stride_tok


@triton.jit
def _soft_capped(qk, scale_log2, SOFT_CAP: tl.constexpr):
    """Base-2 scores: qk * scale, or SOFT_CAP * tanh(qk * scale / SOFT_CAP) (Gemma 2)."""
    if SOFT_CAP > 0:
        x = qk * (scale_log2 * LN2 / SOFT_CAP)
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)  # exact limits: exp overflows to inf
        return tanh * (SOFT_CAP / LN2)
    return qk * scale_log2


@triton.jit
def attend_tile(q, k, v, qk_mask, m, l, acc, scale_log2, FP32_DOT: tl.constexpr,
                SOFT_CAP: tl.constexpr = 0.0):
    """One online-softmax step: fold the tile (k [N, D], v [N, D]) into the running row max
    `m`, denominator `l` (both base 2) and unnormalised output `acc` [M, D] of queries q [M, D].

    Rows whose mask is all false in this tile keep their state (p = 0), also before their
    first visible key (a sliding window starts rows of one program at different keys).
    """
    if FP32_DOT:
        qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k.to(q.dtype)))  # the cache may hold another half type
    qk = tl.where(qk_mask, _soft_capped(qk, scale_log2, SOFT_CAP), float("-inf"))
    m_new = tl.maximum(m, tl.max(qk, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf for unseen rows
    p = tl.exp2(qk - m_ref[:, None])
    alpha = tl.exp2(m - m_ref)
    l = l * alpha + tl.sum(p, 1)
    if FP32_DOT:
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return m_new, l, acc * alpha[:, None] + pv
