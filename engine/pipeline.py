"""Pipeline parallelism: which layers a stage holds, and the traffic between stages.

Ranks are laid out as vLLM lays them out: global rank = stage * tp + tp_rank, so stage 0's
tensor-parallel rank 0 is global rank 0 (the engine's rank, which schedules and samples).
Each rank of stage s sends its step's hidden states and residual to the rank of the same
tp_rank in stage s + 1 (after a tensor-parallel all-reduce every rank of a stage holds them
whole). The last stage's tp_rank 0 sends the sampled rows' logits to rank 0, so the sampler
and all of its per-request state (penalties, seeds, grammars, logprobs) stay in one place.
"""
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(slots=True, frozen=True)
class PPGroup:
    """This process's pipeline stage (size 1: the whole model, no traffic)."""
    rank: int = 0
    size: int = 1
    tp_size: int = 1
    tp_rank: int = 0

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def global_rank(self, stage: int, tp_rank: int | None = None) -> int:
        return stage * self.tp_size + (self.tp_rank if tp_rank is None else tp_rank)


class PPMissingLayer(nn.Module):
    """Stands where another stage's module is: no parameters, so no weights are read."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("a module of another pipeline stage was called")


_stage: ContextVar[PPGroup] = ContextVar("pp_group", default=PPGroup())  # noqa: B039 (never mutated)


@contextmanager
def use_stage(stage: PPGroup) -> Iterator[None]:
    token = _stage.set(stage)
    try:
        yield
    finally:
        _stage.reset(token)


def pp_group() -> PPGroup:
    return _stage.get()


def stage_of(rank: int, tp_size: int, pp_size: int) -> PPGroup:
    """The stage of global rank `rank` in a world of tp_size * pp_size ranks."""
    return PPGroup(rank // tp_size, pp_size, tp_size, rank % tp_size)


def get_pp_indices(num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
    """[start, end) of the layers of stage pp_rank. As vLLM: an even split, and the
    remainder one each to the stages before the last, from the second-to-last backwards
    (the last stage also runs the norm and LM head)."""
    partitions = [num_layers // pp_size] * pp_size
    for i in range(2, num_layers % pp_size + 2):
        partitions[-i] += 1
    start = sum(partitions[:pp_rank])
    return start, start + partitions[pp_rank]


def holds_layer(layer: int, num_layers: int) -> bool:
    s = pp_group()
    start, end = get_pp_indices(num_layers, s.rank, s.size)
    return start <= layer < end


def send_intermediate(hidden: torch.Tensor, residual: torch.Tensor) -> None:
    """To the same tp_rank of the next stage."""
    s = pp_group()
    dst = s.global_rank(s.rank + 1)
    dist.send(hidden.contiguous(), dst)
    dist.send(residual.contiguous(), dst)


def recv_intermediate(num_tokens: int, hidden_size: int, dtype: torch.dtype,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """From the same tp_rank of the previous stage: (hidden states, residual)."""
    s = pp_group()
    src = s.global_rank(s.rank - 1)
    hidden = torch.empty(num_tokens, hidden_size, dtype=dtype, device=device)
    residual = torch.empty_like(hidden)
    dist.recv(hidden, src)
    dist.recv(residual, src)
    return hidden, residual


def send_logits(logits: torch.Tensor) -> None:
    """The last stage's tp_rank 0 hands the step's logits to rank 0."""
    dist.send(logits.contiguous(), 0)


def recv_logits(num_seqs: int, vocab_size: int, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    s = pp_group()
    logits = torch.empty(num_seqs, vocab_size, dtype=dtype, device=device)
    dist.recv(logits, s.global_rank(s.size - 1, 0))
    return logits
