"""Engine and model configuration: vLLM's argument names, checked before anything starts."""
import json
import os
import re
from dataclasses import dataclass, field, fields

EXECUTOR_BACKENDS = ("uni", "mp")
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
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    torch_dtype: str
    eos_token_id: int | list[int] | None
    sliding_window: int | None = None

    @classmethod
    def from_json(cls, path: str) -> "ModelConfig":
        with open(path) as f:
            d = json.load(f)
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"} or None
        if scaling and scaling.get("type") and not scaling.get("rope_type"):
            scaling["rope_type"] = scaling["type"]
        heads = d["num_attention_heads"]
        arch = d.get("architectures") or []
        return cls(
            architectures=arch, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads, num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            # Qwen2 has q/k/v biases without saying so in its config
            attention_bias=d.get("attention_bias", "Qwen2ForCausalLM" in arch),
            qk_norm="Qwen3ForCausalLM" in arch,
            torch_dtype=d.get("torch_dtype") or d.get("dtype") or "float32",
            eos_token_id=d.get("eos_token_id"),
            sliding_window=d.get("sliding_window") if d.get("use_sliding_window", True) else None)


@dataclass(slots=True)
class EngineConfig:
    """Everything `LLM(...)` and `pagedserve serve` accept about the engine (vLLM's names)."""
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
    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    device: str = "auto"
    kernel_backend: str | None = None
    trust_remote_code: bool = False
    model_path: str = field(default="", init=False)
    hf: ModelConfig | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size",
                     "num_kv_blocks", "tensor_parallel_size"):
            positive(name)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], "
                             f"got {self.gpu_memory_utilization!r}")
        if self.kv_cache_memory is not None:
            self.kv_cache_memory = parse_bytes(self.kv_cache_memory)
        if self.dtype not in ("auto", "float32", "float16", "bfloat16", "half", "float"):
            raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        self._check_backend()

    def _check_backend(self) -> None:
        tp, backend = self.tensor_parallel_size, self.distributed_executor_backend
        if backend is None:
            self.distributed_executor_backend = "uni" if tp == 1 else "mp"
        elif backend not in EXECUTOR_BACKENDS:
            raise ValueError(f"distributed_executor_backend {backend!r} is not supported; use "
                             f"'mp' (a process per extra rank) or 'uni' (one in-process rank)")
        elif backend == "uni" and tp > 1:
            raise ValueError(f"distributed_executor_backend 'uni' runs one rank; "
                             f"tensor_parallel_size={tp} needs 'mp'")

    def _check_tensor_parallel(self) -> None:
        """What tensor parallelism splits must split evenly; checked before any rank starts."""
        tp, hf = self.tensor_parallel_size, self.hf
        heads, kv = hf.num_attention_heads, hf.num_key_value_heads
        if heads % tp:
            raise ValueError(f"the model's {heads} attention heads are not divisible by "
                             f"tensor_parallel_size={tp}")
        if kv % tp and tp % kv:
            raise ValueError(f"the model's {kv} KV heads do not split over tensor_parallel_size"
                             f"={tp}: one must be a multiple of the other")
        if hf.intermediate_size % tp:
            raise ValueError(f"the model's intermediate_size {hf.intermediate_size} is not "
                             f"divisible by tensor_parallel_size={tp}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init]

    def load_model_config(self, model_path: str) -> None:
        """Read config.json and settle max_model_len against the model's limits."""
        self.model_path = model_path
        self.hf = ModelConfig.from_json(os.path.join(model_path, "config.json"))
        self._check_tensor_parallel()
        limit = self.hf.max_position_embeddings
        if self.hf.sliding_window:
            # without sliding-window attention, stay inside the window to remain exact
            limit = min(limit, self.hf.sliding_window)
        if self.max_model_len is None:
            self.max_model_len = limit
        elif self.max_model_len > limit:
            raise ValueError(f"max_model_len ({self.max_model_len}) exceeds the model's "
                             f"limit of {limit} tokens")
