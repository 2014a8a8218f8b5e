"""AsyncLLMEngine: the engine behind an asyncio server (vLLM's AsyncLLM).

The frontend validates and tokenizes (InputProcessor), batches adds and aborts per event-loop
tick into one message for the engine core, and gives each request its own output collector;
`generate()` is an async iterator over that request's outputs, and leaving it early (client
gone, task cancelled) aborts the request. The core runs behind a core client
(engine/core_client.py): in its own process by default, or on a thread of this one. Either
way it sends deltas, so a step's message does not grow with what each request has generated.
"""
import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.core import CoreCommands, CoreFailed, CoreOutputs
from pagedserve.engine.core_client import EngineCoreClient, InprocClient, MPClient
from pagedserve.engine.llm_engine import EngineStats
from pagedserve.engine.output_collector import RequestOutputCollector
from pagedserve.engine.outputs import RequestOutput
from pagedserve.engine.processor import EngineCoreRequest, InputProcessor
from pagedserve.engine.sampling_params import RequestOutputKind, SamplingParams
from pagedserve.engine.tokenizer import PromptType, load_tokenizer

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine core failed; every request in flight gets this, and so do new ones."""


class AsyncLLMEngine:
    def __init__(self, config: EngineConfig, tokenizer, client: EngineCoreClient) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.processor = InputProcessor(config, tokenizer)
        self.client = client
        self.collectors: dict[str, RequestOutputCollector] = {}
        self.dead_error: BaseException | None = None
        self._stats = EngineStats()  # the core's newest
        self._pending = CoreCommands()
        self._pending_seqs = 0  # sequences in self._pending
        self._sent_seqs = 0  # sequences sent to the core so far
        self._flush_scheduled = False
        # The core knows each request by a fresh id, so an output of an aborted request still
        # on its way can never reach a new request that reuses the id.
        self._core_ids = itertools.count()
        self._to_core: dict[str, str] = {}
        # core id -> (our request id, prompt, prompt ids): the pipe does not carry the prompts
        self._from_core: dict[str, tuple[str, str | None, list[int]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    @classmethod
    def from_config(cls, config: EngineConfig, in_process: bool = False) -> "AsyncLLMEngine":
        """Load the model, by default in an engine core process (this process loads the
        tokenizer meanwhile), or here if in_process; a failure to load raises here."""
        client = InprocClient(config) if in_process else MPClient(config)
        try:
            tokenizer = load_tokenizer(config.tokenizer or config.model_path,
                                       config.trust_remote_code)
            client.wait_ready()
        except BaseException:
            client.close(timeout=0)
            raise
        return cls(config, tokenizer, client)

    @property
    def is_running(self) -> bool:
        return self._loop is not None and self.dead_error is None and not self._closing

    def stats(self) -> EngineStats:
        """The core's stats after its latest step. num_waiting also counts the sequences on
        their way to the core: the server bounds it (--max-queue-len), so requests added
        within one event-loop tick must count at once."""
        s = self._stats
        in_transit = self._pending_seqs + self._sent_seqs - s.num_seqs_added
        return replace(s, num_waiting=s.num_waiting + in_transit)

    def start(self) -> None:
        """Start taking the core's outputs (on the running event loop); generate() calls it."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.client.start(self._on_message)

    async def generate(self, prompt: PromptType, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield RequestOutputs (cumulative unless params.output_kind says otherwise) until
        the request finishes. Bad input raises ValueError before anything is queued."""
        self._check_alive()
        self.start()
        req = self.processor.process(request_id, prompt, params)
        rid = req.request_id
        if rid in self.collectors:
            raise ValueError(f"request id {rid!r} is already running")
        collector = RequestOutputCollector(req.params.output_kind)
        self.collectors[rid] = collector
        self._submit(req)
        finished = False
        try:
            while not finished:
                out = collector.get_nowait() or await collector.get()
                finished = out.finished
                yield out
        finally:
            self.collectors.pop(rid, None)
            if not finished:
                self.abort(rid)

    def _submit(self, req: EngineCoreRequest) -> None:
        core_id = f"{req.request_id}#{next(self._core_ids)}"
        self._to_core[req.request_id] = core_id
        self._from_core[core_id] = req.request_id, req.prompt, req.prompt_token_ids
        req.request_id = core_id
        if req.params.output_kind is RequestOutputKind.CUMULATIVE:  # the collector adds up
            req.params = req.params.with_output_kind(RequestOutputKind.DELTA)
        self._pending.adds.append(req)
        self._pending_seqs += req.params.n
        self._schedule_flush()

    def abort(self, request_id: str) -> None:
        """Abort between steps; its KV blocks return to the pool before the next step."""
        core_id = self._to_core.pop(request_id, None)
        if core_id is None:
            return  # finished, or never submitted
        del self._from_core[core_id]
        adds = self._pending.adds
        for i, req in enumerate(adds):
            if req.request_id == core_id:  # not sent yet: no need to tell the core
                del adds[i]
                self._pending_seqs -= req.params.n
                return
        if self.is_running:
            self._pending.aborts.append(core_id)
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
        if self.is_running:
            self.client.send(cmds)

    def _on_message(self, msg: CoreOutputs | CoreFailed) -> None:
        if isinstance(msg, CoreFailed):
            if self.is_running:
                logger.error("the engine core failed: %r", msg.error)
                self.dead_error = msg.error
                self._fail_all(EngineDeadError(f"the engine failed: {msg.error!r}"))
            return
        self._stats = msg.stats  # first: a consumer woken below sees them current
        for out in msg.outputs:
            known = self._from_core.get(out.request_id)
            if known is None:
                continue  # aborted meanwhile
            rid, prompt, prompt_ids = known
            if out.prompt_token_ids is None:  # came over the pipe (core.CoreOutputs)
                out.prompt, out.prompt_token_ids = prompt, prompt_ids
            if out.finished:
                del self._from_core[out.request_id], self._to_core[rid]
            out.request_id = rid
            collector = self.collectors.get(rid)
            if collector is not None:
                collector.put(out)

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.dead_error!r}")

    def _fail_all(self, error: BaseException) -> None:
        self._to_core.clear()
        self._from_core.clear()
        for collector in self.collectors.values():
            collector.put(error)

    async def shutdown(self) -> None:
        """Stop the core (and its tensor-parallel workers); requests in flight get errors."""
        if self._closing:
            return
        self._closing = True
        self._fail_all(EngineDeadError("the engine was shut down"))
        await asyncio.to_thread(self.client.close)
