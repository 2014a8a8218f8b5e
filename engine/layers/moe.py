"""Mixture-of-experts MLP: a top-k softmax router over experts stored as one stacked weight per
projection. Tensor parallelism splits every expert's intermediate dimension (as vLLM's fused
MoE does), so each rank runs all experts on a slice and the partial outputs are summed."""
import torch
from torch import nn

from pagedserve import kernels
from pagedserve.engine.distributed import all_reduce, tp_rank, tp_size
from pagedserve.engine.layers.linear import _divide


def select_experts(router_logits: torch.Tensor, top_k: int,
                   renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32 [T, K], expert ids [T, K]): the top-k of the fp32 softmax, rescaled to
    sum to 1 when `renormalize` (Mixtral; Qwen-MoE's norm_topk_prob)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class FusedMoE(nn.Module):
    """Experts as w13 [E, 2I/tp, H] (gate rows, then up rows) and w2 [E, H, I/tp].

    reduce_results=False returns this rank's partial sum, for a caller that adds more partial
    sums (a shared expert) before one all-reduce.
    """

    def __init__(self, num_experts: int, top_k: int, hidden: int, intermediate: int,
                 renormalize: bool, reduce_results: bool = True) -> None:
        super().__init__()
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.reduce_results = reduce_results
        self.shard = _divide(intermediate, tp_size(), "expert intermediate size")
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * self.shard, hidden),
                                       requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden, self.shard),
                                      requires_grad=False)
        self.w13_weight.weight_loader = self.weight_loader
        self.w2_weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded, shard_id: tuple[int, str]) -> None:
        """One expert's checkpoint tensor: shard_id = (expert, "gate" | "up" | "down")."""
        expert, which = shard_id
        rows = slice(tp_rank() * self.shard, (tp_rank() + 1) * self.shard)
        if which == "down":  # [H, I]: this rank's columns
            param.data[expert].copy_(loaded[:, rows])
            return
        offset = 0 if which == "gate" else self.shard
        param.data[expert, offset:offset + self.shard].copy_(loaded[rows])

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(router_logits, self.top_k, self.renormalize)
        y = kernels.fused_moe(x, self.w13_weight, self.w2_weight, weights, ids)
        return all_reduce(y) if self.reduce_results else y


def expert_param(name: str, expert_names: dict[str, str]) -> tuple[str, int, str] | None:
    """Map a per-expert checkpoint name, `...experts.<e>.<proj>.weight`, to our stacked
    parameter, the expert and its part: expert_names maps <proj> to gate / up / down."""
    head, sep, tail = name.partition(".experts.")
    if not sep:
        return None
    expert, _, rest = tail.partition(".")
    proj = rest.removesuffix(".weight")
    if not expert.isdigit() or proj not in expert_names:
        return None
    which = expert_names[proj]
    target = f"{head}.experts.{'w2_weight' if which == 'down' else 'w13_weight'}"
    return target, int(expert), which
