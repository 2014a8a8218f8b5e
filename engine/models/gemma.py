"""Gemma 2 and Gemma 3 (text): (1 + weight) RMSNorms around both attention and MLP, GeGLU,
embeddings scaled by sqrt(hidden), attention scaled by query_pre_attn_scalar, local
(sliding-window) and global layers; Gemma 2 soft-caps attention and final logits, Gemma 3
normalises q/k and gives its local layers their own rope base."""
import torch
from torch import nn

from pagedserve.engine.config import ModelConfig
from pagedserve.engine.layers.attention import AttentionMetadata
from pagedserve.engine.layers.layernorm import GemmaRMSNorm
from pagedserve.engine.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP


class GemmaDecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, layer: int, ropes: dict) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(c, layer, ropes, norm=GemmaRMSNorm)
        self.mlp = LlamaMLP(c.hidden_size, c.intermediate_size, c.hidden_act)
        h, eps = c.hidden_size, c.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(h, eps)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        # the residual add of each block is fused into the next block's input norm
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(positions, x, meta))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class GemmaForCausalLM(LlamaForCausalLM):
    """Gemma2ForCausalLM and Gemma3ForCausalLM."""
    layer_cls = GemmaDecoderLayer
    norm_cls = GemmaRMSNorm

    def __init__(self, c: ModelConfig) -> None:
        super().__init__(c)
        self.model.embed_scale = c.hidden_size ** 0.5
        self.final_logit_softcapping = c.final_logit_softcapping

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = self.lm_head(hidden)
        cap = self.final_logit_softcapping
        if logits is None or not cap:
            return logits
        return torch.tanh(logits / cap) * cap
