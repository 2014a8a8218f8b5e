"""Gated MLP activations: act(x[..., :d]) * x[..., d:] for x [..., 2d]."""
import torch
import torch.nn.functional as F
from torch import nn

from pagedserve import kernels


class SiluAndMul(nn.Module):
    """SwiGLU (Llama, Mistral, Qwen, Mixtral, Phi-3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.silu_and_mul(x)


class GeluAndMul(nn.Module):
    """GeGLU (Gemma); approximate="tanh" is transformers' gelu_pytorch_tanh."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate=self.approximate) * up


_ACTIVATIONS = {"silu": SiluAndMul, "swish": SiluAndMul,
                "gelu_pytorch_tanh": lambda: GeluAndMul("tanh"),
                "gelu_new": lambda: GeluAndMul("tanh"), "gelu": GeluAndMul}


def get_act_and_mul(name: str) -> nn.Module:
    """The gated activation for a config's hidden_act; ValueError names unsupported ones."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: "
                         f"{', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]()
