"""pagedserve: LLM serving with a paged KV cache, continuous batching and an OpenAI API.

`from pagedserve import LLM, SamplingParams` loads the engine (and torch) on first use only,
so the operator, which lives in this namespace too, stays torch-free.
"""
__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from pagedserve import engine
        return getattr(engine, name)
    raise AttributeError(f"module 'pagedserve' has no attribute {name!r}")
