"""Rotary position embedding (neox layout, as Hugging Face checkpoints store q/k)."""
import math

import torch
from torch import nn

from pagedserve import kernels


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths slowed by `factor`, short kept, smooth
    interpolation between (the published rope_type "llama3" rule)."""
    factor, low, high = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(is_mid, mid, out)


def rope_inv_freq(head_size: int, theta: float, scaling: dict | None) -> torch.Tensor:
    # fp32 throughout, as the checkpoints' reference implementation computes it
    inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2).float() / head_size)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    raise ValueError(f"unsupported rope_type {kind!r}; supported: default, linear, llama3")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, max_position: int, theta: float,
                 scaling: dict | None = None) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_size, theta, scaling)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float), inv_freq)
        self.register_buffer("cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), -1),
                             persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
        kernels.rotary_embedding(positions, q, k, self.cos_sin_cache)


def get_rope(cache: dict, head_size: int, max_position: int, theta: float,
             scaling: dict | None) -> RotaryEmbedding:
    """One RotaryEmbedding per distinct setting in `cache` (a model's layers share it)."""
    key = (head_size, max_position, theta, repr(sorted((scaling or {}).items())))
    if key not in cache:
        cache[key] = RotaryEmbedding(head_size, max_position, theta, scaling)
    return cache[key]
