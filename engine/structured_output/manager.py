"""StructuredOutputManager: compiles grammars off the step loop and masks a batch's logits."""
import logging
from collections import OrderedDict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import torch

from pagedserve.engine.structured_output.config import StructuredOutputsConfig
from pagedserve.engine.structured_output.params import StructuredOutputsParams
from pagedserve.engine.structured_output.reasoning import ReasoningEnd
from pagedserve.engine.structured_output.request import StructuredOutputRequest
from pagedserve.engine.structured_output.spec import GrammarSpec, grammar_spec

logger = logging.getLogger(__name__)
CACHE_SIZE = 256  # compiled grammars kept for reuse, least recently used dropped first


class StructuredOutputManager:
    """Engine-side structured outputs. Compiles run on a small thread pool, cached by spec, so
    a slow compile delays only its own request; the backend (and xgrammar's import) comes
    with the first constrained request, so unconstrained serving never pays for it."""

    def __init__(self, config: StructuredOutputsConfig, tokenizer, vocab_size: int,
                 stop_token_ids: frozenset[int], max_workers: int = 2) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids
        self.max_workers = max_workers
        self._backend = None
        self._executor: ThreadPoolExecutor | None = None
        self._cache: OrderedDict[GrammarSpec, Future] = OrderedDict()
        # with a reasoning parser, constraints wait for the end of the thinking; a tokenizer
        # without its think tokens is refused here, when the engine starts
        self.reasoning_end: ReasoningEnd | None = None
        if config.reasoning_parser:
            self.reasoning_end = ReasoningEnd.for_parser(config.reasoning_parser, tokenizer)

    @property
    def backend(self):
        if self._backend is None:
            from pagedserve.engine.structured_output.xgrammar_backend import XgrammarBackend
            self._backend = XgrammarBackend(self.tokenizer, self.vocab_size,
                                            list(self.stop_token_ids))
            self._executor = ThreadPoolExecutor(self.max_workers, "grammar-compile")
        return self._backend

    def grammar_init(self, params: StructuredOutputsParams,
                     prompt_token_ids: list[int]) -> StructuredOutputRequest:
        """Start (or reuse) the compile of this request's grammar; never blocks."""
        spec = grammar_spec(params, self.config)
        backend = self.backend
        future = self._cache.get(spec)
        if future is None or (future.done() and future.exception() is not None):
            future = self._executor.submit(backend.compile, spec)
            self._cache[spec] = future
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(spec)
        return StructuredOutputRequest(spec, future, backend.new_grammar,
                                       self._reasoning_ended(prompt_token_ids))

    def _reasoning_ended(self, prompt_token_ids: list[int]) -> bool:
        if self.reasoning_end is None or self.config.enable_in_reasoning:
            return True
        return self.reasoning_end.is_reasoning_end(prompt_token_ids)

    def apply_bitmask(self, logits: torch.Tensor,
                      requests: list[StructuredOutputRequest | None]) -> None:
        """Mask, in place, each constrained row of logits (one row per request, in order) to
        the tokens its grammar allows next; unconstrained rows are left as they are."""
        rows = [i for i, so in enumerate(requests) if so is not None and so.active]
        if not rows:
            return
        bitmask = self.backend.allocate_bitmask(logits.shape[0])
        for i in rows:
            requests[i].grammar.fill_bitmask(bitmask, i)
        self.backend.apply_bitmask(logits, bitmask, rows)

    def accept_token(self, so: StructuredOutputRequest, token_id: int) -> bool:
        """Advance the request's matcher by its sampled token (or, while it thinks, watch for
        the end of the thinking). False if the grammar refused the token."""
        if not so.reasoning_ended:
            so.reasoning_ended = self.reasoning_end.is_end_token(token_id)
            return True
        if so.grammar.is_terminated():
            return True
        if so.grammar.accept_token(token_id):
            return True
        logger.error("grammar refused sampled token %d (%s constraint)", token_id, so.spec.kind)
        return False

    def wait_for_compiles(self, requests: list[StructuredOutputRequest],
                          timeout: float) -> None:
        """Block until one of these compiles is done (or timeout): an idle engine waits here
        instead of spinning."""
        wait([so.future for so in requests], timeout, FIRST_COMPLETED)

    def shutdown(self) -> None:
        if self._executor is not None:
            # no cancel_futures: it needs the queue module, gone when LLM.__del__ runs at exit
            self._executor.shutdown(wait=False)
