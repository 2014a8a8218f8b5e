"""Vocab-parallel embedding and LM head: each rank holds a contiguous slice of the vocab."""
import torch
import torch.nn.functional as F
from torch import nn

from pagedserve import kernels
from pagedserve.engine.distributed import all_reduce, gather_to_first, tp_rank, tp_size
from pagedserve.kernels.utils import cdiv


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.shard = cdiv(vocab_size, tp_size())  # the last rank's shard is padded
        self.start = tp_rank() * self.shard
        self.weight = nn.Parameter(torch.zeros(self.shard, hidden), requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded, shard_id=None) -> None:
        end = min(self.start + self.shard, self.vocab_size)
        param.data[:end - self.start].copy_(loaded[self.start:end])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if tp_size() == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.start
        mask = (local >= 0) & (local < self.shard)
        y = F.embedding(torch.where(mask, local, 0), self.weight) * mask[:, None]
        return all_reduce(y)


class ParallelLMHead(VocabParallelEmbedding):
    """Logits for the selected positions, gathered on rank 0 (the only rank that samples)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = gather_to_first(kernels.linear(hidden, self.weight))
        return None if logits is None else logits[:, :self.vocab_size]
