"""Phi-3: a Llama-shaped decoder whose checkpoints store q/k/v as one `qkv_proj` and gate/up
as one `gate_up_proj`; both are split at load time into the parts each rank's fused
parameter holds (so tensor parallelism shards them like Llama's)."""
import torch

from pagedserve.engine.config import ModelConfig
from pagedserve.engine.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__(c)
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        # fused checkpoint tensor -> its parts, as (shard id, rows)
        self.fused_parts = {
            "qkv_proj": (("q", 0, q), ("k", q, kv), ("v", q + kv, kv)),
            "gate_up_proj": ((0, 0, c.intermediate_size),
                             (1, c.intermediate_size, c.intermediate_size)),
        }

    def load_weight(self, params: dict, name: str, tensor) -> str | None:
        fused = name.split(".")[-2] if name.count(".") >= 2 else ""
        if fused not in self.fused_parts:
            return super().load_weight(params, name, tensor)
        param = params[name]
        with torch.no_grad():
            for shard_id, start, size in self.fused_parts[fused]:
                param.weight_loader(param, tensor[start:start + size], shard_id)
        return name
