"""Structured outputs: decoding constrained to a JSON schema, a regex, a choice or a grammar
(vLLM's names). xgrammar compiles the grammar and masks the logits; it is imported only when
a request first asks for a constraint (StructuredOutputManager.backend)."""
from pagedserve.engine.structured_output.config import StructuredOutputsConfig
from pagedserve.engine.structured_output.params import StructuredOutputsParams

__all__ = ["StructuredOutputsConfig", "StructuredOutputsParams"]
