"""Triton RMSNorm, fused with the residual add that precedes it in every decoder layer."""
import torch
import triton
import triton.language as tl

from pagedserve.kernels.triton_utils import pow2


@triton.jit
def _rms_norm(x_ptr, r_ptr, w_ptr, o_ptr, ro_ptr, eps, s_x, s_r, s_o, s_ro,
              N: tl.constexpr, BLOCK: tl.constexpr, HAS_RES: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * s_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        # round the sum to the activation dtype, as an unfused `x + residual` would
        x = (x.to(tl.float32) + tl.load(r_ptr + row * s_r + cols, mask=mask).to(tl.float32))
        x = x.to(ro_ptr.dtype.element_ty)
        tl.store(ro_ptr + row * s_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, 0) / N + eps)
    normed = (xf * rstd).to(x.dtype).to(tl.float32)  # the reference rounds before the weight
    w = tl.load(w_ptr + cols, mask=mask).to(tl.float32)
    tl.store(o_ptr + row * s_o + cols, (normed * w).to(o_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[rows, N] view (a copy only when the leading dims cannot be flattened)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None):
    """RMSNorm in fp32; with `residual`, adds it first and returns (normed, new_residual)."""
    n = x.shape[-1]
    x2 = _rows(x)
    out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype),
                      device=x.device)
    if residual is None:
        r2 = res_out = x2  # unused by the kernel
    else:
        r2 = _rows(residual)
        res_out = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, residual.dtype),
                              device=x.device)
    if x2.shape[0]:
        block = pow2(n)
        _rms_norm[(x2.shape[0],)](x2, r2, weight, out, res_out, eps, x2.stride(0), r2.stride(0),
                                  out.stride(0), res_out.stride(0), N=n, BLOCK=block,
                                  HAS_RES=residual is not None,
                                  num_warps=min(16, max(1, block // 256)))
    out = out.view(x.shape)
    return out if residual is None else (out, res_out.view(x.shape))
