"""Llama-family decoder: Llama 2/3, Yi, TinyLlama, Mistral, Qwen2 (qkv bias), Qwen3 (q/k norm).

The variants differ only in config flags, so one module serves them all; the other families
(MoE, Gemma, Phi-3) reuse its attention, layer and model with their own MLP, norms or weight
names. Sliding-window layers (config.layer_types) get the window and their own rope.
"""
import re

import torch
from torch import nn

from pagedserve.engine.config import ModelConfig
from pagedserve.engine.layers.activation import get_act_and_mul
from pagedserve.engine.layers.attention import Attention, AttentionMetadata
from pagedserve.engine.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from pagedserve.engine.layers.layernorm import RMSNorm
from pagedserve.engine.layers.linear import (
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagedserve.engine.layers.rotary import RotaryEmbedding, get_rope
from pagedserve.engine.loader import load_tensor
from pagedserve.engine.model_config import SLIDING
from pagedserve.engine.pipeline import PPMissingLayer, get_pp_indices, pp_group

_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def is_sliding(c: ModelConfig, layer: int) -> bool:
    return bool(c.sliding_window) and c.layer_types[layer] == SLIDING


def layer_rope(c: ModelConfig, layer: int, ropes: dict) -> RotaryEmbedding:
    """The layer's rotary embedding, one per distinct setting (sliding layers may differ)."""
    if c.partial_rotary_factor != 1.0:
        raise ValueError(f"partial_rotary_factor {c.partial_rotary_factor} is not supported")
    if is_sliding(c, layer):
        return get_rope(ropes, c.head_dim, c.max_positions, c.local_rope_theta,
                        c.local_rope_scaling)
    return get_rope(ropes, c.head_dim, c.max_positions, c.rope_theta, c.rope_scaling)


class LlamaAttention(nn.Module):
    def __init__(self, c: ModelConfig, layer: int, ropes: dict,
                 norm: type[RMSNorm] = RMSNorm) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(c.hidden_size, c.head_dim, c.num_attention_heads,
                                          c.num_key_value_heads, bias=c.attention_bias)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.head_dim = c.head_dim
        self.o_proj = RowParallelLinear(c.num_attention_heads * c.head_dim, c.hidden_size)
        self.rotary_emb = layer_rope(c, layer, ropes)
        scale = (c.query_pre_attn_scalar or c.head_dim) ** -0.5
        window = c.sliding_window if is_sliding(c, layer) else None
        self.attn = Attention(self.num_heads, c.head_dim, self.num_kv_heads, scale, window,
                              c.attn_logit_softcapping)
        self.q_norm = self.k_norm = None
        if c.qk_norm:
            self.q_norm = norm(c.head_dim, c.rms_norm_eps)
            self.k_norm = norm(c.head_dim, c.rms_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        v = v.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.contiguous(), k.contiguous()
        self.rotary_emb(positions, q, k)
        o = self.attn(q, k, v.contiguous(), meta)
        return self.o_proj(o.reshape(-1, q_size))


class LlamaMLP(nn.Module):
    """Gated MLP; reduce_results=False leaves the tensor-parallel sum to the caller."""

    def __init__(self, hidden: int, intermediate: int, act: str,
                 reduce_results: bool = True) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden, [intermediate] * 2)
        self.down_proj = RowParallelLinear(intermediate, hidden, reduce_results=reduce_results)
        self.act_fn = get_act_and_mul(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, layer: int, ropes: dict) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(c, layer, ropes)
        self.mlp = self.make_mlp(c, layer)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def make_mlp(self, c: ModelConfig, layer: int) -> nn.Module:
        return LlamaMLP(c.hidden_size, c.intermediate_size, c.hidden_act)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    """The decoder stack; under pipeline parallelism only this stage's part of it (the
    embedding on the first stage, the final norm on the last, layers [start, end))."""

    def __init__(self, c: ModelConfig, layer_cls: type[nn.Module] = LlamaDecoderLayer,
                 norm: type[RMSNorm] = RMSNorm) -> None:
        super().__init__()
        pp = pp_group()
        self.start, self.end = get_pp_indices(c.num_hidden_layers, pp.rank, pp.size)
        self.is_last = pp.is_last
        self.embed_tokens = (VocabParallelEmbedding(c.vocab_size, c.hidden_size)
                             if pp.is_first else PPMissingLayer())
        ropes: dict = {}  # layers with the same rope share one cos/sin cache
        self.layers = nn.ModuleList(layer_cls(c, i, ropes) if self.start <= i < self.end
                                    else PPMissingLayer() for i in range(c.num_hidden_layers))
        self.norm = norm(c.hidden_size, c.rms_norm_eps) if pp.is_last else PPMissingLayer()
        self.embed_scale = None

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                intermediate: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Normed hidden states on the last stage; (hidden, residual) for the next stage on
        the others. A stage after the first starts from the previous one's `intermediate`."""
        if intermediate is None:
            x, residual = self.embed_tokens(ids), None
            if self.embed_scale is not None:  # Gemma, rounded to the model's dtype as it does
                x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        else:
            x, residual = intermediate
        for layer in self.layers[self.start:self.end]:
            x, residual = layer(positions, x, residual, meta)
        if not self.is_last:
            return x, residual
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    # checkpoint name -> (our fused parameter, shard id)
    packed_modules = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }
    layer_cls: type[nn.Module] = LlamaDecoderLayer
    norm_cls: type[RMSNorm] = RMSNorm

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.model = LlamaModel(c, self.layer_cls, self.norm_cls)
        pp = pp_group()
        self.tied = c.tie_word_embeddings
        self.lm_head = (ParallelLMHead(c.vocab_size, c.hidden_size) if pp.is_last
                        else PPMissingLayer())
        if self.tied and pp.is_first and pp.is_last:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                intermediate: tuple[torch.Tensor, torch.Tensor] | None = None):
        return self.model(ids, positions, meta, intermediate)

    def holds_weight(self, name: str) -> bool:
        """Whether a checkpoint tensor belongs to this pipeline stage (each rank reads only
        its own stage's weights)."""
        m = _LAYER.match(name)
        if m:
            return self.model.start <= int(m.group(1)) < self.model.end
        if name.startswith("model.embed_tokens."):
            # a tied last stage fills its LM head from the embedding
            return not isinstance(self.model.embed_tokens, PPMissingLayer) or (
                self.tied and self.model.is_last)
        if name.startswith(("model.norm.", "lm_head.")):
            return self.model.is_last
        return True

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        return self.lm_head(hidden)

    def load_weight(self, params: dict, name: str, tensor) -> str | None:
        """Load one checkpoint tensor; returns the parameter it filled (None: not ours)."""
        if self.tied and name == "model.embed_tokens.weight" and name not in params:
            name = "lm_head.weight"  # the last pipeline stage, without the embedding
        return load_tensor(params, self.packed_modules, name, tensor)
