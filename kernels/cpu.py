"""The CPU backend: paged attention compiled from csrc/paged_attention.c, linear layers
through oneDNN (onednn.py), torch for the rest.

The C file is built on first use with the system C compiler into a cache folder
($PAGEDSERVE_KERNEL_CACHE, default ~/.cache/pagedserve/kernels) under a name hashed from the
source, flags, compiler and CPU, and loaded with ctypes. It reads K/V in place through the
block table (the torch reference copies them out, padded). Queries are float32, the cache
float32 or bfloat16 (--kv-cache-dtype). Without a working compiler, or for inputs it does not
take (other dtypes, not on the CPU), the torch reference runs instead.
"""
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from pagedserve.kernels import reference
from pagedserve.kernels.onednn import linear, pack_linear_weight
from pagedserve.kernels.reference import (
    fused_moe,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    store_kv_cache,
)

__all__ = ["linear", "pack_linear_weight", "store_kv_cache", "paged_attention_decode",
           "paged_prefill_attention", "rms_norm", "rotary_embedding", "silu_and_mul", "fused_moe",
           "load", "available", "set_attention_threads", "release_inputs"]

log = logging.getLogger(__name__)
SOURCE = Path(__file__).parent / "csrc" / "paged_attention.c"
COMPILER = os.environ.get("CC", "cc")
# -ffast-math's parts, so the compiler may vectorize the dot-product and softmax sums; the C
# code keeps every value finite, which is all -ffinite-math-only asks. Not -ffast-math itself:
# GCC then links crtfastmath.o, which turns on flush-to-zero for the whole process on load.
# -fopenmp: the kernel's OpenMP threads come from the libgomp torch already loaded (same
# soname); its helper pool (for cores torch's threads leave alone) is plain pthreads.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-freciprocal-math",
         "-fno-signed-zeros", "-fno-trapping-math", "-ffinite-math-only", "-fopenmp", "-pthread",
         "-shared", "-fPIC"]
CACHE_ENV = "PAGEDSERVE_KERNEL_CACHE"
_ARGTYPES = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
             ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
             ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
             ctypes.c_float, ctypes.c_int, ctypes.c_float, ctypes.c_int, ctypes.c_int,
             ctypes.c_int]
_lib: ctypes.CDLL | None = None
_tried = False
_threads: int | None = None  # set_attention_threads; None: torch's thread count
# the inputs of calls a helper thread may still be reading (see the C file's "Threads")
_held: list[tuple[torch.Tensor | None, ...]] = []


def set_attention_threads(n: int | None) -> None:
    """The CPUs the attention kernel may use; None: as many as torch's intra-op threads.
    While torch runs on as many threads, the kernel splits its work over them (OpenMP).
    When a thread governor has put torch on fewer (a server's core sharing the CPUs with
    its HTTP frontend), the kernel runs on the calling thread plus a helper per CPU torch
    left. Helpers sleep between calls and take only the work they get to: the caller never
    waits for one that is not running, it computes what is left itself."""
    global _threads
    if n is not None and n < 1:
        raise ValueError(f"attention threads must be >= 1, got {n}")
    _threads = n


def cache_dir() -> Path:
    """Where built kernels live ($PAGEDSERVE_KERNEL_CACHE or ~/.cache/pagedserve/kernels)."""
    default = Path.home() / ".cache" / "pagedserve" / "kernels"
    return Path(os.environ.get(CACHE_ENV) or default)


def _cpu_id() -> str:
    # -march=native code must not be loaded on another CPU sharing the same cache folder
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + flags


def _build_key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), compiler.encode(),
                 version.encode(), _cpu_id().encode()):
        h.update(part + b"\0")
    return h.hexdigest()[:16]


def _compile(compiler: str, target: Path) -> None:
    # build beside the target and rename: other processes see no file or a whole one
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True,
                       text=True, timeout=300, check=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, built on the first call; None (after one warning) when it
    cannot be built or loaded."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    compiler = shutil.which(COMPILER)
    try:
        if compiler is None:
            raise FileNotFoundError(f"no C compiler {COMPILER!r} on PATH")
        path = cache_dir() / f"paged_attention-{_build_key(compiler)}.so"
        if not path.exists():
            _compile(compiler, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or e
        log.warning("CPU attention kernel unavailable, using the torch reference: %s", detail)
        return None
    lib.paged_attention.argtypes = _ARGTYPES
    lib.paged_attention.restype = ctypes.c_int
    lib.pool_inside.argtypes = []
    lib.pool_inside.restype = ctypes.c_int
    _lib = lib
    return lib


def available() -> bool:
    """True when the compiled kernel builds and loads here."""
    return load() is not None


def _takes(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    return (q.device.type == "cpu" and q.dtype == torch.float32
            and k_cache.dtype in (torch.float32, torch.bfloat16) and q.stride(-1) == 1
            and q.stride(-2) == q.shape[-1] and load() is not None)


def _run(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
         block_tables: torch.Tensor, seq_lens: torch.Tensor,
         query_start_loc: torch.Tensor | None, scale: float, sliding_window: int | None,
         logits_soft_cap: float | None) -> torch.Tensor | None:
    for t in (k_cache, v_cache, block_tables, seq_lens, query_start_loc):
        assert t is None or t.device.type == "cpu" and t.is_contiguous(), "CPU, contiguous"
    assert v_cache.dtype == k_cache.dtype and v_cache.shape == k_cache.shape
    assert block_tables.dtype == seq_lens.dtype == torch.int32
    assert query_start_loc is None or query_start_loc.dtype == torch.int32
    num_tokens, num_heads, head_size = q.shape
    out, threads = torch.empty(q.shape, dtype=q.dtype), torch.get_num_threads()
    if num_tokens == 0:
        return out
    helpers = max(0, (_threads or threads) - threads)
    rc = _lib.paged_attention(
        out.data_ptr(), q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        block_tables.data_ptr(), block_tables.stride(0), seq_lens.data_ptr(),
        None if query_start_loc is None else query_start_loc.data_ptr(), seq_lens.numel(),
        num_tokens, num_heads, k_cache.shape[2], head_size, k_cache.shape[1], scale,
        sliding_window or 0, logits_soft_cap or 0.0, k_cache.dtype == torch.bfloat16,
        threads, helpers)
    if helpers or _held:  # OpenMP alone (offline) never leaves a helper inside
        _hold(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc)
    return out if rc == 0 else None


def release_inputs(timeout_s: float = 1.0) -> None:
    """Let go of the inputs kept for helper threads, once none is inside a call (an engine
    shutting down frees its KV cache): a helper leaves within an item's time of running."""
    deadline = time.monotonic() + timeout_s
    while _held and _lib is not None and _lib.pool_inside() and time.monotonic() < deadline:
        time.sleep(0.001)
    if _lib is None or not _lib.pool_inside():
        _held.clear()


def _hold(*inputs: torch.Tensor | None) -> None:
    """Keep a call's inputs alive while a helper thread may still read them: one that was
    preempted inside an item the caller took over reads them after the call returned."""
    if _lib.pool_inside():
        _held.append(inputs)
    else:
        _held.clear()


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None,
                           logits_soft_cap: float | None = None) -> torch.Tensor:
    """Same contract as reference.paged_attention_decode."""
    if _takes(q, k_cache):
        out = _run(q, k_cache, v_cache, block_tables, seq_lens, None, scale, sliding_window,
                   logits_soft_cap)
        if out is not None:
            return out
    return reference.paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, scale,
                                            sliding_window, logits_soft_cap)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float,
                            sliding_window: int | None = None,
                            logits_soft_cap: float | None = None) -> torch.Tensor:
    """Same contract as reference.paged_prefill_attention."""
    if _takes(q, k_cache):
        out = _run(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale,
                   sliding_window, logits_soft_cap)
        if out is not None:
            return out
    return reference.paged_prefill_attention(q, k_cache, v_cache, block_tables,
                                             query_start_loc, seq_lens, scale, sliding_window,
                                             logits_soft_cap)
