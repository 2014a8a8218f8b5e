"""ModelRunner: owns the model and its KV cache on one rank, and runs one step of a batch."""
import logging

import numpy as np
import torch

from pagedserve import kernels
from pagedserve.engine.config import DTYPE_ALIASES, DTYPES, EngineConfig
from pagedserve.engine.cuda_graph import CUDAGraphRunner, capture_sizes, graphs_unavailable
from pagedserve.engine.distributed import TPGroup, use_group
from pagedserve.engine.layers.attention import Attention, AttentionMetadata
from pagedserve.engine.layers.linear import LinearBase
from pagedserve.engine.loader import load_weights
from pagedserve.engine.models import model_class
from pagedserve.engine.pipeline import (
    PPGroup,
    recv_intermediate,
    recv_logits,
    send_intermediate,
    send_logits,
    use_stage,
)
from pagedserve.engine.step_input import StepInput
from pagedserve.kernels.utils import cdiv

CPU_KV_CACHE_DEFAULT = 4 * 2**30
# Torch-reference decode attention copies each sequence's KV padded to the chunk's longest:
# chunks of at most 32 sequences and ~8 MiB of KV per layer stay cache-sized (measured best
# on CPU for 8- and 64-dim heads; see AttentionMetadata.decode_chunk).
TORCH_DECODE_CHUNK = 32
TORCH_DECODE_CHUNK_BYTES = 8 * 2**20
logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # ROCm is "cuda" too
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA/ROCm GPU is visible")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of one of --dtype's names other than auto (config.DTYPES)."""
    return getattr(torch, DTYPE_ALIASES.get(name, name))


def resolve_dtype(name: str, config_dtype: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return torch_dtype(name)
    if device.type == "cpu":
        return torch.float32  # exact and fast enough on CPUs; half types are emulated there
    wanted = torch_dtype(config_dtype) if config_dtype in DTYPES[1:] else torch.bfloat16
    return torch.bfloat16 if wanted == torch.float32 else wanted


class ModelRunner:
    """Step inputs are flat: every scheduled token of every request, one forward for all."""

    def __init__(self, config: EngineConfig, device: torch.device,
                 tp: TPGroup = TPGroup(), pp: PPGroup = PPGroup()) -> None:
        self.config, self.device, self.tp, self.pp = config, device, tp, pp
        mc = config.model_config
        self.dtype = resolve_dtype(config.dtype, mc.torch_dtype, device)
        self.kv_dtype = (self.dtype if config.kv_cache_dtype == "auto"
                         else torch_dtype(config.kv_cache_dtype))
        kernels.select_backend(device, config.kernel_backend)
        torch.manual_seed(config.seed)
        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(device), use_group(tp), use_stage(pp):
                self.model = model_class(mc.architectures)(mc)
        finally:
            torch.set_default_dtype(default)
        with use_group(tp):  # each rank reads only its own shards
            load_weights(self.model, config.model_path)
        for m in self.model.modules():
            if isinstance(m, LinearBase):
                m.process_weights_after_loading()
        self.model.eval()
        self.attn_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.block_size = config.block_size
        self.num_blocks = 0
        self.use_graphs = self._graphs_wanted()
        self.graphs: CUDAGraphRunner | None = None

    def _graphs_wanted(self) -> bool:
        """enforce_eager=False (the default) asks for decode graphs; where they cannot run,
        decode runs eagerly and rank 0 says so once: at INFO on a CPU, where eager is all
        there is (as in vLLM), else as a warning (a GPU that could have run them)."""
        if self.config.enforce_eager:
            return False
        why = graphs_unavailable(self.device, kernels.active_backend())
        if why is None and self.pp.size > 1:
            why = "decode graphs do not cover pipeline parallelism yet"
        if why and self.tp.rank == 0:
            level = logging.INFO if self.device.type == "cpu" else logging.WARNING
            logger.log(level, "enforce_eager=False: %s; decode runs eagerly", why)
        return why is None

    def kv_bytes_per_block(self) -> int:
        a = self.attn_layers[0]
        per_token = 2 * a.num_kv_heads * a.head_size * self.kv_dtype.itemsize
        return per_token * self.block_size * len(self.attn_layers)

    def decide_num_blocks(self) -> int:
        """Pool size: explicit count, else kv_cache_memory, else (GPU) what
        gpu_memory_utilization leaves after a peak-sized step, else (CPU) up to 4 GiB."""
        c = self.config
        if c.num_kv_blocks:
            return c.num_kv_blocks
        per_block = self.kv_bytes_per_block()
        useful = c.max_num_seqs * cdiv(c.max_model_len, self.block_size)
        if c.kv_cache_memory:
            return max(1, c.kv_cache_memory // per_block)
        if self.device.type == "cpu":  # the ranks share the host's memory
            world = self.tp.size * self.pp.size
            return max(1, min(useful, CPU_KV_CACHE_DEFAULT // world // per_block))
        return max(1, self._profile_free_bytes() // per_block)

    def _profile_free_bytes(self) -> int:
        c = self.config
        torch.cuda.reset_peak_memory_stats(self.device)
        self.allocate_kv_cache(cdiv(c.max_num_batched_tokens, self.block_size) + 1,
                               capture=False)
        n = min(c.max_num_batched_tokens, c.max_model_len)
        table = [list(range(len(self.attn_layers[0].k_cache)))]
        self.execute(StepInput(torch.zeros(n, dtype=torch.long), torch.arange(n), table, [n], [n]))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        # graphs captured over the profiling cache hold what the real ones will
        graph_bytes = self._capture_graphs() if self.use_graphs else 0
        self.allocate_kv_cache(0)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        return kv_budget_bytes(total, free, c.gpu_memory_utilization, peak + graph_bytes)

    def allocate_kv_cache(self, num_blocks: int, capture: bool = True) -> None:
        """A pool of `num_blocks` blocks per layer; decode graphs (when used) are captured
        over it, since they hold its addresses."""
        self.graphs = None
        a = self.attn_layers[0]
        shape = (num_blocks, self.block_size, a.num_kv_heads, a.head_size)
        for layer in self.attn_layers:
            layer.k_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
            layer.v_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        self.num_blocks = num_blocks
        if num_blocks and capture and self.use_graphs:
            self._capture_graphs()

    @torch.inference_mode()
    def _capture_graphs(self) -> int:
        """Capture decode graphs over the current cache; returns the device bytes they hold."""
        c = self.config
        self.graphs = CUDAGraphRunner(self.model, capture_sizes(c.max_num_seqs),
                                      cdiv(c.max_model_len, self.block_size), self.device)
        with use_group(self.tp):
            return self.graphs.capture()

    @torch.inference_mode()
    def execute(self, step: StepInput) -> torch.Tensor | None:
        """Run one step; returns the logits of the rows `_logit_rows` picks, one per sequence
        (rank 0; other tensor-parallel ranks get None)."""
        dev = self.device
        meta = self._metadata(step.padded())
        if self.pp.size > 1:
            return self._execute_stage(step, meta)
        with use_group(self.tp):
            if self.graphs is not None and self.graphs.can_run(meta):
                hidden = self.graphs.run(step.input_ids, step.positions, meta)
            else:
                hidden = self.model(step.input_ids.to(dev), step.positions.to(dev), meta)
            return self.model.compute_logits(hidden[self._logit_rows(meta, step.logit_counts)])

    def _execute_stage(self, step: StepInput, meta: AttentionMetadata) -> torch.Tensor | None:
        """This pipeline stage's part of the step: one batch goes through the stages in turn
        (no micro-batches yet); the logits end on rank 0."""
        dev, pp, mc = self.device, self.pp, self.config.model_config
        ids, positions = step.input_ids.to(dev), step.positions.to(dev)
        with use_group(self.tp), use_stage(pp):
            inter = None if pp.is_first else recv_intermediate(
                len(ids), mc.hidden_size, self.dtype, dev)
            out = self.model(ids, positions, meta, inter)
            if not pp.is_last:
                send_intermediate(*out)
                logits = None
            else:
                logits = self.model.compute_logits(out[self._logit_rows(meta)])
            if pp.is_last and self.tp.rank == 0:
                send_logits(logits)
            if pp.is_first and self.tp.rank == 0:
                return recv_logits(len(step.num_new), mc.vocab_size, self.dtype, dev)
        return None

    def _logit_rows(self, meta: AttentionMetadata,
                    counts: list[int] | None = None) -> torch.Tensor:
        # each sequence's last new token: the position its next token is sampled from
        last = meta.query_start_loc[1:].long() - 1
        if counts is None:
            return last
        # and for prompt logprobs, the positions before it too (rows in batch order)
        return torch.cat([torch.arange(int(e) - c + 1, int(e) + 1, device=last.device)
                          for e, c in zip(last.tolist(), counts)])

    def _metadata(self, step: StepInput) -> AttentionMetadata:
        positions, num_new = step.positions, step.num_new
        table_t = torch.from_numpy(step.block_tables.astype(np.int32, copy=False))
        seq_of_token = torch.repeat_interleave(torch.arange(len(num_new)), torch.tensor(num_new))
        block = table_t[seq_of_token, positions // self.block_size].long()
        slots = block * self.block_size + positions % self.block_size
        qsl = torch.zeros(len(num_new) + 1, dtype=torch.int32)
        qsl[1:] = torch.tensor(num_new).cumsum(0)
        dev = self.device
        return AttentionMetadata(slots.to(dev), table_t.to(dev),
                                 torch.tensor(step.seq_lens, dtype=torch.int32, device=dev),
                                 qsl.to(dev), max(num_new), _leading_ones(num_new),
                                 self._decode_chunk(max(step.seq_lens)))

    def _decode_chunk(self, max_seq_len: int) -> int:
        if kernels.active_backend() != "torch":
            return 0
        a = self.attn_layers[0]
        seq_bytes = 2 * a.num_kv_heads * a.head_size * self.dtype.itemsize * max_seq_len
        return max(1, min(TORCH_DECODE_CHUNK, TORCH_DECODE_CHUNK_BYTES // seq_bytes))


def kv_budget_bytes(total: int, free: int, utilization: float, used: int) -> int:
    """The KV cache's share of a device: `utilization` of all of it (vLLM's meaning: this
    engine's share, so two engines at 0.45 fit one GPU) less what this engine's weights, peak
    step and graphs take. A share that is no longer free, because other processes hold it,
    is an error naming the setting, not an out-of-memory part-way through the allocation."""
    budget = int(total * utilization) - used
    if budget > free:
        gib = 2**30
        raise ValueError(
            f"gpu_memory_utilization={utilization} leaves {budget / gib:.1f} GiB for the KV "
            f"cache, but only {free / gib:.1f} GiB of the device's {total / gib:.1f} GiB are "
            f"free (other processes hold {max(0, total - free - used) / gib:.1f} GiB): lower "
            f"gpu_memory_utilization or set kv_cache_memory")
    return budget


def _leading_ones(num_new: list[int]) -> int:
    """How many sequences at the front of the batch decode a single token."""
    for i, n in enumerate(num_new):
        if n != 1:
            return i
    return len(num_new)
