"""The engine: requests in, tokens out. Knows nothing of HTTP or Kubernetes.

Public names load lazily so that light modules (config, arg_utils) import without torch.
"""
_EXPORTS = {
    "LLM": "pagedserve.engine.llm",
    "LLMEngine": "pagedserve.engine.llm_engine",
    "AsyncLLMEngine": "pagedserve.engine.async_engine",
    "EngineConfig": "pagedserve.engine.config",
    "SamplingParams": "pagedserve.engine.sampling_params",
    "RequestOutputKind": "pagedserve.engine.sampling_params",
    "RequestOutput": "pagedserve.engine.outputs",
    "CompletionOutput": "pagedserve.engine.outputs",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pagedserve.engine' has no attribute {name!r}")
