"""AsyncLLMEngine over an engine core process (engine/core_process.py).

This process validates and tokenizes, batches adds and aborts per event-loop tick into one
message, and reads the core's per-step messages on a thread that hands them to the event loop
(so the loop never blocks on the pipe, and the core never blocks on a full pipe). Streams
travel as deltas and are made cumulative again here, so a step's message does not grow with
the length of what each request has generated so far.
"""
import asyncio
import atexit
import itertools
import logging
import threading

from pagedserve.engine.async_engine import AsyncLLMEngine, EngineDeadError
from pagedserve.engine.config import EngineConfig
from pagedserve.engine.core_process import (CoreCommands, CoreFailed, CoreOutputs,
                                            EngineCoreProcess)
from pagedserve.engine.llm_engine import EngineStats
from pagedserve.engine.loader import resolve_model_path
from pagedserve.engine.outputs import CompletionOutput, RequestOutput
from pagedserve.engine.processor import EngineCoreRequest, InputProcessor
from pagedserve.engine.sampling_params import RequestOutputKind
from pagedserve.engine.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)
_NO_STATS = CoreOutputs([], EngineStats(0, 0, 0.0, 0, 0, 0), 0, 0, 0, 0)


def merge_delta(acc: RequestOutput | None, delta: RequestOutput) -> RequestOutput:
    """The cumulative output after `delta`, in new objects (consumers may hold the old)."""
    if acc is None:
        return delta  # a request's first delta is all it has so far
    outs = []
    for a, d in zip(acc.outputs, delta.outputs):
        lps = a.logprobs + d.logprobs if d.logprobs is not None else None
        outs.append(CompletionOutput(d.index, a.text + d.text, a.token_ids + d.token_ids,
                                     d.finish_reason, d.stop_reason, lps, d.cumulative_logprob))
    return RequestOutput(delta.request_id, delta.prompt, delta.prompt_token_ids, outs,
                         delta.finished, delta.metrics)


class CoreClientEngine(AsyncLLMEngine):
    """AsyncLLMEngine's interface; the engine runs in an EngineCoreProcess."""

    def __init__(self, core: EngineCoreProcess, tokenizer) -> None:
        self._init_frontend(core.config, tokenizer, InputProcessor(core.config, tokenizer))
        self.core = core
        self._pending = CoreCommands()
        self._pending_seqs = 0  # sequences in self._pending
        self._flush_scheduled = False
        self._sent_seqs = 0  # sequences sent to the core so far
        self._last = _NO_STATS  # the core's newest counters
        self._acc: dict[str, RequestOutput | None] = {}  # cumulative requests sent as DELTA
        # The core knows each request by a fresh id, so an output of an aborted request still
        # in the pipe can never reach a new request that reuses the id.
        self._core_ids = itertools.count()
        self._to_core: dict[str, str] = {}
        self._from_core: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: threading.Thread | None = None
        self._closing = False

    @classmethod
    def launch(cls, config: EngineConfig) -> "CoreClientEngine":
        """Start the core and load the tokenizer meanwhile; returns once the model is loaded
        (a failure to load raises here, as it does in-process)."""
        path = resolve_model_path(config.model)
        core = EngineCoreProcess(config)
        try:
            tokenizer = load_tokenizer(config.tokenizer or path)
            core.wait_ready()
        except BaseException:
            core.stop(timeout=0)
            raise
        return cls(core, tokenizer)

    @property
    def is_running(self) -> bool:
        return self._reader is not None and self.dead_error is None and not self._closing

    @property
    def num_waiting(self) -> int:
        in_transit = self._sent_seqs - self._last.num_seqs_received
        return self._last.stats.num_waiting + self._pending_seqs + in_transit

    @property
    def num_prompt_tokens(self) -> int:
        return self._last.num_prompt_tokens

    @property
    def num_generation_tokens(self) -> int:
        return self._last.num_generation_tokens

    def stats(self) -> EngineStats:
        return self._last.stats

    def start(self) -> None:
        if self._reader is None:
            self._loop = asyncio.get_running_loop()
            self._reader = threading.Thread(target=self._read, name="engine-core-reader",
                                            daemon=True)
            self._reader.start()

    def _submit(self, req: EngineCoreRequest) -> None:
        core_id = f"{req.request_id}#{next(self._core_ids)}"
        self._to_core[req.request_id], self._from_core[core_id] = core_id, req.request_id
        req.request_id = core_id
        if req.params.output_kind is RequestOutputKind.CUMULATIVE:
            req.params = req.params.with_output_kind(RequestOutputKind.DELTA)
            self._acc[req.request_id] = None
        self._pending.adds.append(req)
        self._pending_seqs += req.params.n
        self._schedule_flush()

    def abort(self, request_id: str) -> None:
        request_id = self._to_core.pop(request_id, None)
        if request_id is None:
            return  # finished, or never submitted
        del self._from_core[request_id]
        self._acc.pop(request_id, None)
        adds = self._pending.adds
        for i, req in enumerate(adds):
            if req.request_id == request_id:  # not sent yet: no need to tell the core
                del adds[i]
                self._pending_seqs -= req.params.n
                return
        if self._loop is not None and self.dead_error is None and not self._closing:
            self._pending.aborts.append(request_id)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:  # one message per event-loop tick
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        cmds, self._pending = self._pending, CoreCommands()
        self._sent_seqs += self._pending_seqs
        self._pending_seqs = 0
        if self.dead_error is not None or self._closing:
            return
        try:
            self.core.send(cmds)
        except OSError:
            pass  # the core is gone; the reader reports why

    def _read(self) -> None:
        """Reader thread: every message from the core goes to the event loop, in order."""
        try:
            while True:
                msg = self.core.recv()
                self._loop.call_soon_threadsafe(self._on_message, msg)
                if isinstance(msg, CoreFailed):
                    return
        except (EOFError, OSError):
            self.core.proc.join(1.0)
            error = RuntimeError(f"the engine core process died ({self.core.describe_exit()})")
            try:
                self._loop.call_soon_threadsafe(self._on_message, CoreFailed(error))
            except RuntimeError:
                pass  # the event loop has closed: nobody is left to tell

    def _on_message(self, msg: CoreOutputs | CoreFailed) -> None:
        if isinstance(msg, CoreFailed):
            if not self._closing and self.dead_error is None:
                logger.error("the engine core failed: %r", msg.error)
                self.dead_error = msg.error
                self._fail_all(EngineDeadError(f"the engine failed: {msg.error!r}"))
            return
        self._last = msg  # counters first: a consumer woken below sees them current
        self.steps = msg.num_steps
        outputs = [self._to_user(out) for out in msg.outputs if out.request_id in self._from_core]
        self._dispatch(outputs)

    def _to_user(self, out: RequestOutput) -> RequestOutput:
        core_id = out.request_id
        out = self._accumulate(out) if self._acc else out
        out.request_id = self._from_core[core_id]
        if out.finished:
            del self._from_core[core_id], self._to_core[out.request_id]
        return out

    def _accumulate(self, out: RequestOutput) -> RequestOutput:
        rid = out.request_id
        if rid not in self._acc:
            return out
        out = merge_delta(self._acc[rid], out)
        if out.finished:
            del self._acc[rid]
        else:
            self._acc[rid] = out
        return out

    def _fail_all(self, error: BaseException) -> None:
        self._acc.clear()
        self._to_core.clear()
        self._from_core.clear()
        super()._fail_all(error)

    async def shutdown(self) -> None:
        """Stop the core (and its tensor-parallel workers); requests in flight get errors."""
        if self._closing:
            return
        self._closing = True
        self._fail_all(EngineDeadError("the engine was shut down"))
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self.core.stop()
        if self._reader is not None:
            self._reader.join(5.0)
        self.core.conn.close()
