"""Command-line flags for EngineConfig, with vLLM's names (shared by serve, generate, bench)."""
import argparse
from types import SimpleNamespace

from pagedserve.engine.config import DTYPES, KV_CACHE_DTYPES, EngineConfig


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    d = SimpleNamespace(**EngineConfig.defaults())
    g = parser.add_argument_group("engine")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or hub id (default: the model's)")
    g.add_argument("--trust-remote-code", action="store_true", default=d.trust_remote_code,
                   help="let the tokenizer run code that comes with the model")
    g.add_argument("--dtype", default=d.dtype, choices=DTYPES,
                   help="weight and activation dtype; auto = float32 on CPU, the model's half "
                        "type on GPU")
    g.add_argument("--seed", type=int, default=d.seed, help="seed for unseeded sampling")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context length (prompt + output); default: the model's")
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs,
                   help="most sequences in one batch")
    g.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens,
                   help="token budget of one step; longer prompts are prefilled in chunks")
    g.add_argument("--block-size", type=int, default=d.block_size, help="tokens per KV-cache block")
    g.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization,
                   help="fraction of GPU memory for weights, activations and KV cache")
    g.add_argument("--kv-cache-memory", default=None,
                   help="KV cache size in bytes or like '2GiB' (overrides the GPU fraction; "
                        "CPU default 4GiB)")
    g.add_argument("--kv-cache-dtype", default=d.kv_cache_dtype, choices=KV_CACHE_DTYPES,
                   help="KV cache element type; auto = the model's dtype. bfloat16 halves the "
                        "cache's memory and what decode attention reads (faster on CPUs)")
    g.add_argument("--num-kv-blocks", type=int, default=None,
                   help="exact KV block count (debugging)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                   default=d.enable_prefix_caching,
                   help="share KV blocks of common prompt prefixes")
    _add_parallel_args(g, d)
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda (ROCm GPUs are cuda)")
    g.add_argument("--kernel-backend", default=None,
                   help="torch, cpu (compiled C attention) or triton; default triton on GPUs, "
                        "cpu on CPUs")
    g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction,
                   default=d.enforce_eager,
                   help="run decode eagerly; by default (--no-enforce-eager) decode steps are "
                        "CUDA/HIP graphs on a GPU with the triton backend, eager elsewhere")


def _add_parallel_args(g, d: SimpleNamespace) -> None:
    """Tensor and pipeline parallelism, and ranks on several machines."""
    g.add_argument("--tensor-parallel-size", "-tp", type=int, default=d.tensor_parallel_size,
                   help="GPUs (ranks) one model is split across")
    g.add_argument("--pipeline-parallel-size", "-pp", type=int,
                   default=d.pipeline_parallel_size,
                   help="pipeline stages the layers are split into, each a tensor-parallel group")
    g.add_argument("--nnodes", type=int, default=d.nnodes,
                   help="machines the ranks spread over (world = nnodes x local ranks)")
    g.add_argument("--node-rank", type=int, default=d.node_rank,
                   help="this machine's index; 0 leads and serves, the others run headless "
                        "(only their workers, no HTTP server)")
    g.add_argument("--master-addr", default=None,
                   help="the leader's address every rank connects to (default MASTER_ADDR or "
                        "127.0.0.1)")
    g.add_argument("--master-port", type=int, default=None,
                   help="the leader's rendezvous port (default MASTER_PORT, or a free port on "
                        "one node)")
    g.add_argument("--distributed-executor-backend", default=None, choices=["uni", "mp"],
                   help="uni: one in-process rank; mp: one process per extra rank "
                        "(default for tp > 1)")


def engine_kwargs_from_args(args: argparse.Namespace) -> dict:
    """The EngineConfig keyword arguments (all but model) found in parsed flags."""
    names = set(EngineConfig.field_names()) - {"model"}
    return {k: v for k, v in vars(args).items() if k in names}
