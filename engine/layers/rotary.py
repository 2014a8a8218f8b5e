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


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_correction_dim(rotations: float, dim: int, base: float, old_len: int) -> float:
    return dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


def _yarn_inv_freq(head_size: int, theta: float, s: dict, max_position: int) -> torch.Tensor:
    """YaRN (rope_type "yarn", Qwen2.5/Qwen3 long context): dimensions that rotate fewer than
    beta_slow times over the original context are interpolated by `factor`, those rotating
    more than beta_fast times kept, a linear ramp between."""
    old_len = s.get("original_max_position_embeddings") or max_position
    factor = s.get("factor") or max_position / old_len
    base = theta ** (torch.arange(0, head_size, 2).float() / head_size)
    low = _yarn_correction_dim(s.get("beta_fast") or 32, head_size, theta, old_len)
    high = _yarn_correction_dim(s.get("beta_slow") or 1, head_size, theta, old_len)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_size - 1)
    ramp = (torch.arange(head_size // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)
    keep = 1 - ramp.clamp(0, 1)  # 1: extrapolate (keep the frequency), 0: interpolate
    return (1 / (factor * base)) * (1 - keep) + (1 / base) * keep


def rope_attention_factor(scaling: dict | None, max_position: int) -> float:
    """What cos/sin are scaled by: 1 except for YaRN, whose attention temperature is
    `attention_factor` or derived from the scaling factor (and mscale/mscale_all_dim)."""
    s = scaling or {}
    if s.get("rope_type") != "yarn":
        return 1.0
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    old_len = s.get("original_max_position_embeddings") or max_position
    factor = s.get("factor") or max_position / old_len
    if s.get("mscale") and s.get("mscale_all_dim"):
        return _yarn_mscale(factor, s["mscale"]) / _yarn_mscale(factor, s["mscale_all_dim"])
    return _yarn_mscale(factor)


def rope_inv_freq(head_size: int, theta: float, scaling: dict | None,
                  max_position: int = 0) -> torch.Tensor:
    # fp32 throughout, as the checkpoints' reference implementation computes it
    inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2).float() / head_size)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling)
    if kind == "yarn":
        return _yarn_inv_freq(head_size, theta, scaling, max_position)
    raise ValueError(f"unsupported rope_type {kind!r}; supported: default, linear, llama3, yarn")


class RotaryEmbedding(nn.Module):
    def __init__(self, head_size: int, max_position: int, theta: float,
                 scaling: dict | None = None) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_size, theta, scaling, max_position)
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float), inv_freq)
        scale = rope_attention_factor(scaling, max_position)
        self.register_buffer("cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), -1) * scale,
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
