import torch
from torch import nn

from pagedserve import kernels


class RMSNorm(nn.Module):
    """RMSNorm; called with a residual it fuses the add and returns (out, residual)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return kernels.rms_norm(x, self.weight, self.eps, residual)
