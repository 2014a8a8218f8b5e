"""Request: one sequence the scheduler moves between waiting, running and finished."""
import enum
import time

import torch

from pagedserve.engine.sampling_params import SamplingParams
from pagedserve.engine.structured_output.request import StructuredOutputRequest


class RequestStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


class Request:
    """A single sample being generated. `n > 1` fans out into n Requests sharing a parent id.

    token_ids holds prompt and output; num_computed_tokens counts the tokens whose KV is in the
    cache, so a prefill chunk, a decode step and a recompute after preemption are the same thing:
    compute token_ids[num_computed_tokens:].
    """

    def __init__(self, request_id: str, parent_id: str, index: int, prompt_token_ids: list[int],
                 params: SamplingParams, max_output_tokens: int, eos_token_ids: frozenset[int],
                 arrival_time: float | None = None) -> None:
        self.request_id = request_id
        self.parent_id = parent_id
        self.index = index
        self.params = params
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.max_output_tokens = max_output_tokens
        self.eos_token_ids = eos_token_ids
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.block_table: list[int] = []
        self.block_hashes: list[int] = []
        self.num_preemptions = 0
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        # per prompt token {id: logprob}, None first (nothing predicts it); filled at prefill
        self.prompt_logprobs: list[dict[int, float] | None] | None = (
            [None] if params.prompt_logprobs is not None else None)
        self.cumulative_logprob = 0.0
        self.generator: torch.Generator | None = None
        # the request's grammar and matcher when it asks for structured outputs (the engine
        # sets it); kept through preemption, since recompute never changes sampled tokens
        self.structured_output: StructuredOutputRequest | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed + index)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[:self.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def finish(self, reason: str, stop_reason: str | int | None = None) -> None:
        self.status = RequestStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
