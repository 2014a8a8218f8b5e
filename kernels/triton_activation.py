"""Triton SiLU-and-mul (the SwiGLU activation between gate/up and down projections)."""
import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _silu_and_mul(x_ptr, o_ptr, s_x, s_o, D: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    gate = tl.load(x_ptr + row * s_x + cols, mask=mask).to(tl.float32)
    up = tl.load(x_ptr + row * s_x + D + cols, mask=mask).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(o_ptr + row * s_o + cols, out.to(o_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU: silu(x[..., :d]) * x[..., d:] for x [..., 2d]."""
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape[0], d, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        _silu_and_mul[(x2.shape[0], triton.cdiv(d, BLOCK))](x2, out, x2.stride(0), out.stride(0),
                                                           D=d, BLOCK=BLOCK)
    return out.view(*x.shape[:-1], d)
