"""EngineClient: what a server may use of an engine (AsyncLLMEngine implements it)."""
from collections.abc import AsyncIterator
from typing import Protocol

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.llm_engine import EngineStats
from pagedserve.engine.outputs import RequestOutput
from pagedserve.engine.sampling_params import SamplingParams
from pagedserve.engine.tokenizer import PromptType


class EngineClient(Protocol):
    config: EngineConfig
    tokenizer: object  # a transformers tokenizer
    dead_error: BaseException | None

    @property
    def is_running(self) -> bool:
        """Started, and neither failed nor shut down."""

    def start(self) -> None:
        """Begin taking outputs on the running event loop."""

    def generate(self, prompt: PromptType, params: SamplingParams | None = None,
                 request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """The request's outputs until it finishes; leaving early aborts it."""

    def stats(self) -> EngineStats:
        """Gauges and counters for /metrics and admission."""

    async def shutdown(self) -> None:
        """Stop the engine; requests in flight get errors."""
