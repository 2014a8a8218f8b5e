"""RequestOutputCollector: one request's outputs on their way from the engine to a consumer.

The core sends what is new each step (DELTA). A consumer that falls behind (a busy server)
takes, when it looks next, everything that arrived meanwhile as one output, as vLLM's
collector does: joined deltas for a DELTA request, the state so far for a CUMULATIVE one, so
it sends one chunk instead of a backlog, and nothing is lost.
"""
import asyncio
import copy
from dataclasses import fields

from pagedserve.engine.outputs import CompletionOutput, RequestOutput
from pagedserve.engine.sampling_params import RequestOutputKind


def _join(old, new, grow: bool):
    """`new` with every field merged into `old`'s, in a new object: with `grow`, text and
    lists are appended; any other field takes the newest value that is set."""
    merged = copy.copy(new)
    for f in fields(new):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if grow and isinstance(b, (str, list)) and isinstance(a, type(b)):
            setattr(merged, f.name, a + b)
        elif b is None:
            setattr(merged, f.name, a)
    return merged


def _join_completion(old: CompletionOutput, new: CompletionOutput) -> CompletionOutput:
    # a finished sequence stays as it is: later outputs of its request repeat its end
    return old if old.finished else _join(old, new, grow=True)


def merge_outputs(old: RequestOutput | None, new: RequestOutput) -> RequestOutput:
    """The delta `new` appended to `old` (old stays unchanged: a consumer may hold it)."""
    if old is None:
        return new
    seqs = {o.index: o for o in old.outputs}
    for o in new.outputs:
        seqs[o.index] = _join_completion(seqs[o.index], o) if o.index in seqs else o
    merged = _join(old, new, grow=False)
    merged.outputs = [seqs[i] for i in sorted(seqs)]
    return merged


class RequestOutputCollector:
    """What a request's consumer has not taken yet, merged into one output (or an error)."""

    def __init__(self, output_kind: RequestOutputKind) -> None:
        self.cumulative = output_kind is RequestOutputKind.CUMULATIVE
        self._sofar: RequestOutput | None = None  # CUMULATIVE: every delta so far, merged
        self._pending: RequestOutput | BaseException | None = None
        # a bare future, not an asyncio.Event: this is waited on once per token of a stream
        self._waiter: asyncio.Future | None = None

    def put(self, item: RequestOutput | BaseException) -> None:
        """Add the engine's next delta, or an error that ends the request."""
        if isinstance(self._pending, BaseException):
            return  # the request has failed: nothing after its error matters
        if isinstance(item, BaseException):
            self._pending = item
        elif self.cumulative:
            self._pending = self._sofar = merge_outputs(self._sofar, item)
        else:
            self._pending = merge_outputs(self._pending, item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> RequestOutput | None:
        """What arrived since the last get, or None; raises the request's error."""
        item, self._pending = self._pending, None
        if isinstance(item, BaseException):
            raise item
        return item

    async def get(self) -> RequestOutput:
        while self._pending is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()
