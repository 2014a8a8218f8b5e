"""Megatron-style linear layers. Each parameter carries a weight_loader that reads only this
rank's shard from a safetensors slice, so no rank ever materialises the full weight."""
import torch
from torch import nn

from pagedserve import kernels
from pagedserve.engine.distributed import all_reduce, tp_rank, tp_size


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what} ({n}) is not divisible by tensor_parallel_size ({d})")
    return n // d


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        param.data.copy_(loaded[:])

    def process_weights_after_loading(self) -> None:
        """Swap the loaded weight for the layout the kernel backend's linear runs fastest
        with (oneDNN's on CPUs; GPUs keep it); the plain copy is freed."""
        packed = kernels.pack_linear_weight(self.weight.data)
        if packed is not self.weight.data:
            self.weight = nn.Parameter(packed, requires_grad=False)


class ReplicatedLinear(LinearBase):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """Splits output features across ranks; the output stays sharded."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, _divide(out_features, tp_size(), "output size"), bias)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        size = param.shape[0]
        param.data.copy_(loaded[tp_rank() * size:(tp_rank() + 1) * size])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of one input fused into one matmul (gate/up)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id: int) -> None:
        size = self.output_sizes[shard_id] // tp_size()
        offset = sum(self.output_sizes[:shard_id]) // tp_size()
        param.data[offset:offset + size].copy_(loaded[tp_rank() * size:(tp_rank() + 1) * size])


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection. KV heads are sharded, or replicated when tp > num_kv_heads."""

    def __init__(self, hidden: int, head_size: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False) -> None:
        tp = tp_size()
        self.head_size = head_size
        self.num_heads = _divide(num_heads, tp, "number of attention heads")
        if tp > num_kv_heads:  # each KV head is replicated on tp // num_kv_heads ranks
            if tp % num_kv_heads:
                raise ValueError(f"tensor_parallel_size ({tp}) must be a multiple of the "
                                 f"number of KV heads ({num_kv_heads}) when larger than it")
        else:
            _divide(num_kv_heads, tp, "number of KV heads")
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_size
        LinearBase.__init__(self, hidden, out, bias)

    def weight_loader(self, param: nn.Parameter, loaded, shard_id: str) -> None:
        q_size, kv_size = self.num_heads * self.head_size, self.num_kv_heads * self.head_size
        if shard_id == "q":
            offset, size, rank = 0, q_size, tp_rank()
        else:
            offset = q_size + (kv_size if shard_id == "v" else 0)
            size, rank = kv_size, tp_rank() // self.kv_replicas
        param.data[offset:offset + size].copy_(loaded[rank * size:(rank + 1) * size])


class RowParallelLinear(LinearBase):
    """Splits input features across ranks and all-reduces the partial outputs (unless the
    caller sums several partial outputs first and reduces once: reduce_results=False)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 reduce_results: bool = True) -> None:
        super().__init__(_divide(in_features, tp_size(), "input size"), out_features, bias)
        assert reduce_results or not bias, "a bias is added once, after the reduce"
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is added once, after the reduce
            param.data.copy_(loaded[:])
            return
        size = param.shape[1]
        param.data.copy_(loaded[:, tp_rank() * size:(tp_rank() + 1) * size])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kernels.linear(x, self.weight)
        if self.reduce_results:
            y = all_reduce(y)
        return y if self.bias is None else y + self.bias
