"""Engine and model configuration: vLLM's argument names, checked before anything starts."""
import json
import os
import re
from dataclasses import dataclass, field, fields

from pagedserve.engine.model_config import MoEConfig, family_fields
from pagedserve.engine.structured_output.config import StructuredOutputsConfig

EXECUTOR_BACKENDS = ("uni", "mp")
DEVICES = ("auto", "cpu", "cuda")  # ROCm GPUs are "cuda" to torch
# --dtype's names (vLLM's); the aliases name the same torch dtypes
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")
DTYPE_ALIASES = {"half": "float16", "float": "float32"}
# --kv-cache-dtype's names: vLLM's, less its fp8 ones (no fp8 kernels here yet)
KV_CACHE_DTYPES = ("auto", "bfloat16")
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20,
          "mib": 2**20, "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tib": 2**40}


def parse_bytes(value: int | str) -> int:
    """'2GiB', '512MiB', '4g' or a plain number of bytes."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"kv_cache_memory must be bytes or a size like '2GiB', got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(slots=True)
class ModelConfig:
    """The architecture facts the engine needs, read from a Hugging Face config.json."""
    architectures: list[str]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    torch_dtype: str
    eos_token_id: int | list[int] | None
    # the family-specific rest: see model_config.family_fields
    sliding_window: int | None = None  # tokens a sliding-window layer sees, its own included
    layer_types: list[str] = field(default_factory=list)  # full_attention / sliding_attention
    local_rope_theta: float = 10000.0  # rope of the sliding-window layers (Gemma 3's differs)
    local_rope_scaling: dict | None = None
    hidden_act: str = "silu"
    attn_logit_softcapping: float | None = None  # Gemma 2
    final_logit_softcapping: float | None = None
    query_pre_attn_scalar: float | None = None  # Gemma: attention scale is its -1/2 power
    partial_rotary_factor: float = 1.0
    moe: MoEConfig | None = None
    rope_theta: float = 10000.0  # of the full-attention layers
    rope_scaling: dict | None = None
    attention_bias: bool = False
    qk_norm: bool = False

    @property
    def max_positions(self) -> int:
        """Positions the model can take: YaRN extends its original context by its factor, as
        vLLM derives max_model_len (Qwen2.5 configs keep max_position_embeddings at 32k)."""
        s = self.rope_scaling or {}
        old, factor = s.get("original_max_position_embeddings"), s.get("factor")
        if s.get("rope_type") == "yarn" and old and factor:
            return max(self.max_position_embeddings, int(old * factor))
        return self.max_position_embeddings

    def split_sizes(self) -> dict[str, int]:
        """The MLP sizes tensor parallelism splits, by their config.json names."""
        sizes = {"intermediate_size": self.intermediate_size}
        if self.moe:
            sizes["moe_intermediate_size"] = self.moe.intermediate_size
            shared = self.moe.shared_expert_intermediate_size
            if shared:
                sizes["shared_expert_intermediate_size"] = shared
        return sizes

    @classmethod
    def from_json(cls, path: str) -> "ModelConfig":
        with open(path) as f:
            d = json.load(f)
        heads = d["num_attention_heads"]
        arch = d.get("architectures") or []
        return cls(
            architectures=arch, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            torch_dtype=d.get("torch_dtype") or d.get("dtype") or "float32",
            eos_token_id=d.get("eos_token_id"), **family_fields(d, arch))


@dataclass(slots=True)
class EngineConfig:
    """Everything `LLM(...)` and `pagedserve serve` accept about the engine (vLLM's names).

    Settled when constructed: the model is found, its config.json read and max_model_len fixed
    against it, so every process that receives the config sees the same one. A bad value
    raises ValueError naming its field, before any process starts.
    """
    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 4096
    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | str | None = None
    num_kv_blocks: int | None = None  # exact pool size; for tests and debugging
    # "auto": the model's dtype; "bfloat16" halves the bytes attention reads per token (on
    # CPUs, where decode attention waits on memory, and for a float32 model on GPUs)
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = 1
    # contiguous stages of layers, each a tensor-parallel group (engine/pipeline.py)
    pipeline_parallel_size: int = 1
    # the ranks spread over nnodes machines (vLLM's names): node_rank 0 leads (schedules,
    # serves), the others run only workers; every rank meets at master_addr:master_port
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    distributed_executor_backend: str | None = None
    device: str = "auto"
    kernel_backend: str | None = None
    # vLLM's flag and default: False captures CUDA/HIP graphs for decode where they can run
    # (engine/cuda_graph.py; on an H200 10x the eager tokens/s at batch 1, 5.8x at 64)
    enforce_eager: bool = False
    # passed to the tokenizer's loading; config.json is read as plain JSON (no code runs), and
    # a model whose architecture needs remote code is refused by the model registry
    trust_remote_code: bool = False
    # default sampling values: "auto" (the model's generation_config.json), "vllm", or a folder
    generation_config: str = "auto"
    # vLLM's structured_outputs_config (a dict of its fields, or the config itself)
    structured_outputs_config: StructuredOutputsConfig | dict | None = None
    # derived from `model` at construction, not arguments
    model_path: str = field(default="", init=False)
    model_config: ModelConfig = field(default=None, init=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._check_values()
        self._check_backend()
        self._check_nodes()
        self.structured_outputs_config = StructuredOutputsConfig.from_value(
            self.structured_outputs_config)
        from pagedserve.engine.loader import resolve_model_path
        self.model_path = resolve_model_path(self.model)
        self.model_config = ModelConfig.from_json(os.path.join(self.model_path, "config.json"))
        self._check_tensor_parallel()
        self._check_pipeline_parallel()
        self.max_model_len = self._settle_max_model_len()

    def _check_values(self) -> None:
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size",
                     "num_kv_blocks", "tensor_parallel_size", "pipeline_parallel_size",
                     "nnodes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of 2, got {self.block_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], "
                             f"got {self.gpu_memory_utilization!r}")
        if self.kv_cache_memory is not None:
            self.kv_cache_memory = parse_bytes(self.kv_cache_memory)
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def _check_backend(self) -> None:
        tp, backend = self.world_size, self.distributed_executor_backend
        if backend is None:
            self.distributed_executor_backend = "uni" if tp == 1 else "mp"
        elif backend not in EXECUTOR_BACKENDS:
            raise ValueError(f"distributed_executor_backend {backend!r} is not supported; use "
                             f"'mp' (a process per extra rank) or 'uni' (one in-process rank)")
        elif backend == "uni" and tp > 1:
            raise ValueError(f"distributed_executor_backend 'uni' runs one rank; "
                             f"tensor_parallel_size={self.tensor_parallel_size} x "
                             f"pipeline_parallel_size={self.pipeline_parallel_size} needs 'mp'")

    def _check_tensor_parallel(self) -> None:
        """What tensor parallelism splits must split evenly; checked before any rank starts."""
        tp, mc = self.tensor_parallel_size, self.model_config
        heads, kv = mc.num_attention_heads, mc.num_key_value_heads
        if heads % tp:
            raise ValueError(f"the model's {heads} attention heads are not divisible by "
                             f"tensor_parallel_size={tp}")
        if kv % tp and tp % kv:
            raise ValueError(f"the model's {kv} KV heads do not split over tensor_parallel_size"
                             f"={tp}: one must be a multiple of the other")
        for name, size in mc.split_sizes().items():
            if size % tp:
                raise ValueError(f"the model's {name} {size} is not divisible by "
                                 f"tensor_parallel_size={tp}")

    def _check_pipeline_parallel(self) -> None:
        """Every stage needs a layer; an uneven split is fine (vLLM's get_pp_indices)."""
        pp, layers = self.pipeline_parallel_size, self.model_config.num_hidden_layers
        if layers < pp:
            raise ValueError(f"pipeline_parallel_size={pp} exceeds the model's {layers} "
                             f"layers: every stage needs at least one")

    def _check_nodes(self) -> None:
        n, r = self.nnodes, self.node_rank
        if not isinstance(r, int) or not 0 <= r < n:
            raise ValueError(f"node_rank must be in [0, nnodes={n}), got {r!r}")
        if self.world_size % n:
            raise ValueError(f"tensor_parallel_size x pipeline_parallel_size = "
                             f"{self.world_size} ranks do not split over nnodes={n}")
        port = self.master_port
        if port is not None and (not isinstance(port, int) or not 0 <= port < 65536):
            raise ValueError(f"master_port must be a TCP port, got {port!r}")
        if n > 1 and not port:
            raise ValueError(f"nnodes={n} needs master_port (and master_addr: the leader's "
                             f"address), where every node's ranks meet")

    @property
    def local_world_size(self) -> int:
        """Ranks on each node (node n holds global ranks n*L .. n*L + L - 1)."""
        return self.world_size // self.nnodes

    @property
    def world_size(self) -> int:
        """Ranks of one engine: tensor_parallel_size x pipeline_parallel_size."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def _settle_max_model_len(self) -> int:
        limit = self.model_config.max_positions
        if self.max_model_len is None:
            return limit
        if self.max_model_len > limit:
            raise ValueError(f"max_model_len ({self.max_model_len}) exceeds the model's "
                             f"limit of {limit} tokens")
        return self.max_model_len

    @classmethod
    def field_names(cls) -> list[str]:
        """The constructor's arguments (what LLM(...) and the CLI may set)."""
        return [f.name for f in fields(cls) if f.init]

    @classmethod
    def defaults(cls) -> dict:
        """Each optional argument's default, without constructing (and so finding) a model."""
        return {f.name: f.default for f in fields(cls) if f.init and f.name != "model"}
