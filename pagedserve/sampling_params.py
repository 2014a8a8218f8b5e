"""`from pagedserve.sampling_params import SamplingParams, StructuredOutputsParams`: the
import path vLLM users write (vllm.sampling_params)."""
from pagedserve.engine.sampling_params import RequestOutputKind, SamplingParams
from pagedserve.engine.structured_output.params import StructuredOutputsParams

__all__ = ["RequestOutputKind", "SamplingParams", "StructuredOutputsParams"]
