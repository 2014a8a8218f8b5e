"""pagedserve: LLM serving with a paged KV cache, continuous batching and an OpenAI API.

`from pagedserve import LLM, SamplingParams` loads the engine (and torch) on first use only,
so the operator, which lives in this namespace too, stays torch-free.
"""
import os

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]

# Idle OpenMP threads (torch's, which the CPU attention kernel shares) spin ~0.3 ms before they
# sleep: long enough to cover the gaps between one step's ops, short enough not to burn a core
# someone else needs. libgomp's default spins ~3 ms, which made 2-thread steps 2-3x slower on
# a busy 2-core host; OMP_WAIT_POLICY=PASSIVE (never spin) cost 25-35 % on an idle one.
# Read when libgomp loads (with torch), so set here, before the engine imports it; a user's
# own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins (GOMP_SPINCOUNT would override their policy).
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"


def __getattr__(name: str):
    if name in __all__:
        from pagedserve import engine
        return getattr(engine, name)
    raise AttributeError(f"module 'pagedserve' has no attribute {name!r}")
