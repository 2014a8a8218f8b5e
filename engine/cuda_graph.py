"""CUDA/HIP graphs for decode steps: launch a whole decode forward as one graph replay.

A decode step of a small model is a few hundred tiny kernel launches; their host-side cost,
not the GPU, bounds its speed. A graph records them once per batch size of a ladder and
replays them with the step's inputs copied into static buffers, a batch padded up to the
next captured size. This works because every kernel of a decode step takes its sizes from
tensor shapes that are fixed per captured size (the block table is always max_model_len
wide) and reads the values that change from step to step (token ids, positions, slots,
block tables, context lengths) from those device buffers, never from host integers.

Graphs hold the addresses of the KV cache they were captured with: a new cache needs new
graphs. Like vLLM, graphs run only on CUDA/ROCm GPUs; elsewhere decode stays eager.
"""
import bisect
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from pagedserve.engine.layers.attention import AttentionMetadata

logger = logging.getLogger(__name__)

# vLLM's default ladder: 1, 2, 4, every 8 up to 256, every 16 up to 512
MAX_CAPTURE_SIZE = 512
_LADDER = [1, 2, 4, *range(8, 256, 8), *range(256, MAX_CAPTURE_SIZE + 1, 16)]


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch sizes to capture: the ladder up to max_num_seqs, which is captured too (so every
    decode batch the scheduler can form has a graph), capped at MAX_CAPTURE_SIZE."""
    top = min(max_num_seqs, MAX_CAPTURE_SIZE)
    sizes = [s for s in _LADDER if s <= top]
    if sizes[-1] != top:
        sizes.append(top)
    return sizes


def padded_size(sizes: list[int], num_seqs: int) -> int | None:
    """The smallest captured size that holds `num_seqs` sequences (None: none does)."""
    i = bisect.bisect_left(sizes, num_seqs)
    return sizes[i] if i < len(sizes) else None


def graphs_unavailable(device: torch.device, kernel_backend: str) -> str | None:
    """Why decode graphs cannot run with this device and kernel backend (None: they can)."""
    if device.type != "cuda":
        return f"CUDA/HIP graphs need a CUDA or ROCm GPU, and the device is {device.type}"
    if kernel_backend != "triton":
        # the torch reference reads lengths back to the host (.max(), .item()): not capturable
        return (f"CUDA/HIP graphs need the triton kernel backend, and it is "
                f"{kernel_backend!r}")
    return None


@dataclass(slots=True)
class StaticDecodeInputs:
    """The inputs of the largest captured decode step; a graph of size N uses the first N rows.

    Padding rows store nothing (slot -1) and attend to one token of block 0 (any block id is
    valid memory), so their attention stays finite and never touches a real sequence's cache.
    Block-table columns past a step's own width keep stale ids: attention reads only the
    blocks that hold a row's seq_len tokens.
    """
    input_ids: torch.Tensor  # [max_batch] int64
    positions: torch.Tensor  # [max_batch] int64
    slot_mapping: torch.Tensor  # [max_batch] int64
    block_tables: torch.Tensor  # [max_batch, max_blocks_per_seq] int32
    seq_lens: torch.Tensor  # [max_batch] int32
    query_start_loc: torch.Tensor  # [max_batch + 1] int32: one new token per sequence

    @classmethod
    def allocate(cls, max_batch: int, max_blocks: int,
                 device: torch.device) -> "StaticDecodeInputs":
        def vec(fill: int, dtype: torch.dtype) -> torch.Tensor:
            return torch.full((max_batch,), fill, dtype=dtype, device=device)
        return cls(vec(0, torch.long), vec(0, torch.long), vec(-1, torch.long),
                   torch.zeros(max_batch, max_blocks, dtype=torch.int32, device=device),
                   vec(1, torch.int32),
                   torch.arange(max_batch + 1, dtype=torch.int32, device=device))

    @property
    def max_batch(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_blocks(self) -> int:
        return self.block_tables.shape[1]

    def metadata(self, size: int) -> AttentionMetadata:
        """Views of the first `size` rows, as the model's layers read them."""
        return AttentionMetadata(self.slot_mapping[:size], self.block_tables[:size],
                                 self.seq_lens[:size], self.query_start_loc[:size + 1],
                                 max_query_len=1, num_decodes=size)

    def load(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
             size: int) -> None:
        """Copy a decode step of n <= size sequences in; rows n..size-1 become padding."""
        n, width = meta.block_tables.shape
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.block_tables[:n, :width].copy_(meta.block_tables, non_blocking=True)
        self.seq_lens[:n].copy_(meta.seq_lens, non_blocking=True)
        if size > n:  # a previous, larger step left real values in these rows
            self.input_ids[n:size] = 0
            self.positions[n:size] = 0
            self.slot_mapping[n:size] = -1
            self.seq_lens[n:size] = 1
            self.block_tables[n:size, 0] = 0


class CUDAGraphRunner:
    """Decode graphs of one model over one KV cache, one per captured batch size.

    Capture and replay run inside the caller's tensor-parallel group and inference mode
    (ModelRunner provides both): a rank's collectives are recorded into its graphs, and every
    rank replays the same size for the same step.
    """

    def __init__(self, model: nn.Module, sizes: list[int], max_blocks_per_seq: int,
                 device: torch.device) -> None:
        self.model, self.sizes, self.device = model, sizes, device
        self.inputs = StaticDecodeInputs.allocate(sizes[-1], max_blocks_per_seq, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None

    def capture(self) -> int:
        """Capture every size, largest first so smaller graphs reuse its memory pool; returns
        the device bytes the graphs hold (counted in the KV-cache sizing)."""
        torch.cuda.synchronize(self.device)
        free_before = torch.cuda.mem_get_info(self.device)[0]
        start = time.perf_counter()
        for size in reversed(self.sizes):
            self._capture_one(size)
        torch.cuda.synchronize(self.device)
        used = free_before - torch.cuda.mem_get_info(self.device)[0]
        logger.info("captured %d decode graphs (batch sizes %d..%d) in %.1f s, %.2f GiB",
                    len(self.sizes), self.sizes[0], self.sizes[-1],
                    time.perf_counter() - start, used / 2**30)
        return max(0, used)

    def _capture_one(self, size: int) -> None:
        ids, pos = self.inputs.input_ids[:size], self.inputs.positions[:size]
        meta = self.inputs.metadata(size)
        # an eager run first: Triton compiles its kernels and the allocator settles outside
        # the graph; the static slots are -1, so neither run writes into the KV cache
        self.model(ids, pos, meta)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the server's other threads may touch CUDA while this one captures
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self.outputs[size] = self.model(ids, pos, meta)
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[size] = graph

    def can_run(self, meta: AttentionMetadata) -> bool:
        """A pure decode step that fits a captured size and the static block table."""
        num_seqs, width = meta.block_tables.shape
        return (meta.max_query_len == 1 and num_seqs <= self.sizes[-1]
                and width <= self.inputs.max_blocks)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        """The model's hidden states [num_seqs, hidden] for a step `can_run` accepted."""
        n = meta.seq_lens.shape[0]
        size = padded_size(self.sizes, n)
        self.inputs.load(input_ids, positions, meta, size)
        self.graphs[size].replay()
        return self.outputs[size][:n]
