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


def _unshadow_hub_kernels() -> None:
    """The checkout's kernels/ folder is also importable as a top-level `kernels` whenever
    the repository root is on sys.path (`python -m` from the checkout; pytest, for the tests
    package). transformers >= 5.25 depends on Hugging Face's package of that name and
    imports it from sys.path: it found ours and failed to load any tokenizer. So in that case
    the real one, when installed, is loaded first, with the root left out of the search."""
    import importlib.util
    import sys
    ours = os.path.realpath(os.path.join(os.path.dirname(__file__), "kernels"))
    try:
        spec = None if "kernels" in sys.modules else importlib.util.find_spec("kernels")
    except (ImportError, ValueError):
        return
    if spec is None or not spec.origin or os.path.dirname(os.path.realpath(spec.origin)) != ours:
        return
    root, saved = os.path.dirname(ours), sys.path[:]
    sys.path[:] = [p for p in saved if os.path.realpath(p or os.curdir) != root]
    try:
        importlib.import_module("kernels")
    except ImportError:
        sys.modules.pop("kernels", None)  # not installed: then transformers does not ask
    finally:
        sys.path[:] = saved


_unshadow_hub_kernels()


def __getattr__(name: str):
    if name in __all__:
        from pagedserve import engine
        return getattr(engine, name)
    raise AttributeError(f"module 'pagedserve' has no attribute {name!r}")
