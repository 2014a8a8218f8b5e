"""Executors run a step's inputs through the model on every tensor-parallel rank.

`uni` runs the single rank in-process. Rank 0 always lives in the engine process; it alone
receives logits and samples.
"""
from dataclasses import dataclass

import numpy as np
import torch

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.model_runner import ModelRunner, resolve_device
from pagedserve.engine.scheduler import SchedulerOutput

BACKENDS = ("uni", "mp")


@dataclass(slots=True)
class StepInput:
    """The flat tensors of one step: everything a rank needs, nothing of request state."""
    input_ids: torch.Tensor
    positions: torch.Tensor
    block_tables: list[list[int]]
    seq_lens: list[int]
    num_new: list[int]


def build_step_input(out: SchedulerOutput) -> StepInput:
    ids, positions, tables, seq_lens = [], [], [], []
    for req, n in zip(out.requests, out.num_new_tokens):
        start = req.num_computed_tokens
        ids.extend(req.token_ids[start:start + n])
        positions.append(np.arange(start, start + n))
        tables.append(req.block_table)
        seq_lens.append(start + n)
    return StepInput(torch.tensor(ids, dtype=torch.long),
                     torch.from_numpy(np.concatenate(positions)), tables, seq_lens,
                     list(out.num_new_tokens))


class UniExecutor:
    """One rank, in this process."""

    def __init__(self, config: EngineConfig) -> None:
        self.runner = ModelRunner(config, resolve_device(config.device))

    def init_kv_cache(self) -> int:
        num_blocks = self.runner.decide_num_blocks()
        self.runner.allocate_kv_cache(num_blocks)
        return num_blocks

    def execute(self, step: StepInput) -> torch.Tensor:
        return self.runner.execute(step.input_ids, step.positions, step.block_tables,
                                   step.seq_lens, step.num_new)

    def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def make_executor(config: EngineConfig):
    backend = config.distributed_executor_backend or ("uni" if config.tensor_parallel_size == 1 else "mp")
    if backend not in BACKENDS:
        raise ValueError(f"unknown distributed_executor_backend {backend!r}; "
                         f"supported: {', '.join(BACKENDS)}")
    if backend == "uni" and config.tensor_parallel_size > 1:
        raise ValueError(f"distributed_executor_backend 'uni' runs one rank; "
                         f"tensor_parallel_size={config.tensor_parallel_size} needs 'mp'")
    if backend == "mp" and config.tensor_parallel_size > 1:
        raise NotImplementedError("the mp executor is not built yet")
    return UniExecutor(config)
