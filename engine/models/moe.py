"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE (with its gated shared expert), Qwen3-MoE
(q/k norm). Llama's attention and layer, with a sparse MLP in the layers the config makes
sparse; the checkpoints' per-expert tensors are stacked into one weight per projection."""
import torch
from torch import nn

from pagedserve.engine.config import ModelConfig
from pagedserve.engine.distributed import all_reduce
from pagedserve.engine.layers.linear import ReplicatedLinear
from pagedserve.engine.layers.moe import FusedMoE, expert_param
from pagedserve.engine.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP


class SparseMoeBlock(nn.Module):
    """Router + experts, plus Qwen2-MoE's shared expert scaled by sigmoid(its gate): the
    shared expert's partial sum joins the experts' before the one all-reduce."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        m = c.moe
        shared = m.shared_expert_intermediate_size
        self.gate = ReplicatedLinear(c.hidden_size, m.num_experts, False)
        self.experts = FusedMoE(m.num_experts, m.top_k, c.hidden_size, m.intermediate_size,
                                m.renormalize, reduce_results=not shared)
        self.shared_expert = self.shared_expert_gate = None
        if shared:
            self.shared_expert = LlamaMLP(c.hidden_size, shared, c.hidden_act,
                                          reduce_results=False)
            self.shared_expert_gate = ReplicatedLinear(c.hidden_size, 1, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.experts(x, self.gate(x))
        if self.shared_expert is None:
            return y
        y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return all_reduce(y)


class MoeDecoderLayer(LlamaDecoderLayer):
    def make_mlp(self, c: ModelConfig, layer: int) -> nn.Module:
        if c.moe.is_moe_layer(layer):
            return SparseMoeBlock(c)
        return LlamaMLP(c.hidden_size, c.intermediate_size, c.hidden_act)


class MoeForCausalLM(LlamaForCausalLM):
    layer_cls = MoeDecoderLayer
    # checkpoint module names -> ours, and each expert projection's part
    renames: tuple[tuple[str, str], ...] = ()
    expert_names = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}

    def __init__(self, c: ModelConfig) -> None:
        if c.moe is None:
            raise ValueError(f"{c.architectures} config has no experts (num_experts)")
        super().__init__(c)

    def load_weight(self, params: dict, name: str, tensor) -> str | None:
        for old, new in self.renames:
            name = name.replace(old, new)
        hit = expert_param(name, self.expert_names)
        if hit is None:
            return super().load_weight(params, name, tensor)
        target, expert, which = hit
        param = params[target]
        with torch.no_grad():
            param.weight_loader(param, tensor, (expert, which))
        return target


class MixtralForCausalLM(MoeForCausalLM):
    renames = ((".block_sparse_moe.", ".mlp."),)
    expert_names = {"w1": "gate", "w3": "up", "w2": "down"}


class Qwen2MoeForCausalLM(MoeForCausalLM):
    """Qwen2-MoE and Qwen3-MoE: same weight names; config flags add biases or q/k norms."""
