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


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm scales by (1 + weight): the 1 is added once, at load time, so the
    same kernel as RMSNorm's runs."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__(size, eps)
        self.weight.weight_loader = self.weight_loader

    @staticmethod
    def weight_loader(param: nn.Parameter, loaded, shard_id=None) -> None:
        param.data.copy_(loaded[:].float() + 1.0)
