"""StepInput: the flat inputs of one step, as every tensor-parallel rank receives them.

Built from the scheduler's output on rank 0, it crosses to the other ranks as raw int64 bytes:
a 4-int header (command, tokens, sequences, block-table width) and the step's flat arrays,
never pickled request objects.
"""
from dataclasses import dataclass

import numpy as np
import torch

from pagedserve.engine.scheduler import SchedulerOutput


def pad_block_tables(block_tables: list[list[int]]) -> np.ndarray:
    """The tables as one zero-padded [num_seqs, max_blocks] int32 array."""
    width = max(map(len, block_tables))
    table = np.zeros((len(block_tables), width), dtype=np.int32)
    for i, row in enumerate(block_tables):
        table[i, :len(row)] = row
    return table


@dataclass(slots=True)
class StepInput:
    """Everything a rank needs for one forward pass, nothing of request state."""
    input_ids: torch.Tensor
    positions: torch.Tensor
    block_tables: list[list[int]] | np.ndarray  # ragged lists, or padded (see `padded`)
    seq_lens: list[int]
    num_new: list[int]
    # logits wanted per sequence: its last `count` new tokens' (None: 1 each). Rank 0 only:
    # prompt logprobs run with one rank (the processor refuses them otherwise)
    logit_counts: list[int] | None = None

    @classmethod
    def from_scheduler_output(cls, out: SchedulerOutput) -> "StepInput":
        ids, positions, tables, seq_lens = [], [], [], []
        for req, n in zip(out.requests, out.num_new_tokens):
            start = req.num_computed_tokens
            if n == 1:  # a decode: most of a busy batch, so no slices or ranges for it
                ids.append(req.token_ids[start])
                positions.append(start)
            else:
                ids.extend(req.token_ids[start:start + n])
                positions.extend(range(start, start + n))
            tables.append(req.block_table)
            seq_lens.append(start + n)
        return cls(torch.tensor(ids, dtype=torch.long), torch.tensor(positions, dtype=torch.long),
                   tables, seq_lens, list(out.num_new_tokens))

    def padded(self) -> "StepInput":
        """This step with its block tables as one padded array (what the kernels read)."""
        if isinstance(self.block_tables, np.ndarray):
            return self
        return StepInput(self.input_ids, self.positions, pad_block_tables(self.block_tables),
                         self.seq_lens, self.num_new, self.logit_counts)

    def encode(self, command: int) -> bytes:
        """The step as one message for a worker rank, `command` first."""
        table = self.padded().block_tables
        header = [command, len(self.input_ids), table.shape[0], table.shape[1]]
        return np.concatenate([header, self.input_ids.numpy(), self.positions.numpy(),
                               self.seq_lens, self.num_new, table.ravel()],
                              dtype=np.int64).tobytes()

    @classmethod
    def decode(cls, data: np.ndarray) -> "StepInput":
        """The step in a message's int64 array (header included), as `encode` wrote it."""
        n, s, w = data[1:4].tolist()
        body = data[4:]
        if len(body) != 2 * n + 2 * s + s * w:
            raise ValueError(f"step message of {len(body)} ints does not match its header "
                             f"({n} tokens, {s} sequences, table width {w})")
        ids = torch.from_numpy(body[:n].copy())
        positions = torch.from_numpy(body[n:2 * n].copy())
        seq_lens = body[2 * n:2 * n + s].tolist()
        num_new = body[2 * n + s:2 * n + 2 * s].tolist()
        return cls(ids, positions, body[2 * n + 2 * s:].reshape(s, w), seq_lens, num_new)
