"""StructuredOutputRequest: one engine request's constraint, its compile and its matcher."""
from concurrent.futures import Future

from pagedserve.engine.structured_output.spec import GrammarSpec


class StructuredOutputRequest:
    """Holds the compile future until the grammar is ready, then the request's own matcher.

    reasoning_ended is False while a reasoning model is still thinking: the constraint then
    neither masks logits nor advances (vLLM's rule: structured outputs apply to the answer).
    """

    def __init__(self, spec: GrammarSpec, future: Future, new_grammar,
                 reasoning_ended: bool = True) -> None:
        self.spec = spec
        self.future = future
        self._new_grammar = new_grammar
        self._grammar = None
        self.reasoning_ended = reasoning_ended

    def is_ready(self) -> bool:
        """The compile finished (successfully or not): the request may be scheduled."""
        return self._grammar is not None or self.future.done()

    def error(self) -> str | None:
        """Why the compile failed, or None."""
        if not self.future.done() or self.future.exception() is None:
            return None
        return str(self.future.exception())

    @property
    def grammar(self):
        """The request's matcher (created on first use, once the compile is done)."""
        if self._grammar is None:
            self._grammar = self._new_grammar(self.future.result())
        return self._grammar

    def is_terminated(self) -> bool:
        """The grammar is complete and accepted its stop token: the request is done."""
        return self.is_ready() and self.grammar.is_terminated()

    @property
    def active(self) -> bool:
        """Whether the constraint masks this step's logits."""
        return self.reasoning_ended and not self.grammar.is_terminated()
