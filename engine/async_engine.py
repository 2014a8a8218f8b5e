"""AsyncLLMEngine: the engine behind an asyncio server.

The frontend half is shared: `generate()` validates and tokenizes (InputProcessor), hands the
request to the engine, and is an async iterator over that request's outputs, which arrive on
its own queue; leaving it early (client gone, task cancelled) aborts the request.

Two backends run the engine. `from_config` starts the engine core in its own process
(engine/core_client.py), so HTTP work and engine Python use two cores. `AsyncLLMEngine(engine)`
keeps an LLMEngine in this process: one background task applies queued adds and aborts between
steps and runs each step in a worker thread (for debugging, embedding and tests that reach
into the engine).
"""
import asyncio
import logging
from collections.abc import AsyncIterator

from pagedserve.engine.config import EngineConfig
from pagedserve.engine.llm_engine import EngineStats, LLMEngine, ParentRequest
from pagedserve.engine.outputs import RequestOutput
from pagedserve.engine.processor import EngineCoreRequest, InputProcessor
from pagedserve.engine.sampling_params import RequestOutputKind, SamplingParams
from pagedserve.engine.tokenizer import PromptType

logger = logging.getLogger(__name__)
HEALTH_CHECK_INTERVAL_S = 1.0


class EngineDeadError(RuntimeError):
    """The engine loop failed; every request in flight gets this, and so do new ones."""


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self._init_frontend(engine.config, engine.tokenizer, engine.processor)
        self.engine = engine
        self._adds: dict[str, ParentRequest] = {}  # not yet in the engine, by request id
        self._aborts: list[str] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def _init_frontend(self, config: EngineConfig, tokenizer, processor: InputProcessor) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.processor = processor
        self.queues: dict[str, asyncio.Queue] = {}
        self.dead_error: BaseException | None = None
        self.steps = 0

    @classmethod
    def from_config(cls, config: EngineConfig, in_process: bool = False) -> "AsyncLLMEngine":
        """Load the model; by default in an engine core process, or here if in_process."""
        if in_process:
            return cls(LLMEngine(config))
        from pagedserve.engine.core_client import CoreClientEngine
        return CoreClientEngine.launch(config)

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._task.done() and self.dead_error is None

    @property
    def num_waiting(self) -> int:
        """Sequences not yet scheduled: queued for the loop or waiting in the scheduler.
        The server bounds this (--max-queue-len), so requests added within one event-loop
        tick, before the loop hands them to the scheduler, must count too."""
        return sum(len(p.children) for p in self._adds.values()) + len(self.engine.scheduler.waiting)

    @property
    def num_prompt_tokens(self) -> int:
        return self.engine.num_prompt_tokens

    @property
    def num_generation_tokens(self) -> int:
        return self.engine.num_generation_tokens

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def start(self) -> None:
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def generate(self, prompt: PromptType, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield RequestOutputs (cumulative unless params.output_kind says otherwise) until
        the request finishes. Bad input raises ValueError before anything is queued."""
        self._check_alive()
        self.start()
        req = self.processor.process(request_id, prompt, params)
        rid = req.request_id
        if rid in self.queues:
            raise ValueError(f"request id {rid!r} is already running")
        # a consumer that fell behind the engine (a busy server) takes only the newest
        # cumulative output, so it sends one chunk instead of a backlog; deltas all count
        coalesce = req.params.output_kind is not RequestOutputKind.DELTA
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[rid] = queue
        self._submit(req)
        finished = False
        try:
            while not finished:
                out = await queue.get()
                while coalesce and not isinstance(out, BaseException) and not queue.empty():
                    out = queue.get_nowait()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finished
                yield out
        finally:
            self.queues.pop(rid, None)
            if not finished:
                self.abort(rid)

    def _submit(self, req: EngineCoreRequest) -> None:
        self._adds[req.request_id] = self.processor.make_parent(req)
        self._wakeup.set()

    def abort(self, request_id: str) -> None:
        """Abort between steps; its KV blocks return to the pool before the next step."""
        if self._adds.pop(request_id, None) is not None:
            return  # it never reached the engine
        if self._wakeup is not None:
            self._aborts.append(request_id)
            self._wakeup.set()

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.dead_error!r}")

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            queue = self.queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)

    async def _run(self) -> None:
        try:
            while True:
                if not (self._adds or self._aborts or self.engine.has_unfinished_requests()):
                    self._wakeup.clear()
                    await self._idle()
                self._apply_pending()
                if not self.engine.has_unfinished_requests():
                    continue
                outputs = await asyncio.to_thread(self.engine.step)
                self.steps += 1
                self._dispatch(outputs)
        except asyncio.CancelledError:
            self._fail_all(EngineDeadError("the engine was shut down"))
            raise
        except BaseException as e:
            logger.exception("engine loop failed")
            self.dead_error = e
            self._fail_all(EngineDeadError(f"the engine failed: {e!r}"))

    async def _idle(self) -> None:
        """Wait for work, checking the executor meanwhile: a tensor-parallel worker can die
        while nothing runs, and /health must say so without waiting for a request."""
        while not self._wakeup.is_set():
            try:
                await asyncio.wait_for(self._wakeup.wait(), HEALTH_CHECK_INTERVAL_S)
            except TimeoutError:
                self.engine.check_health()

    def _apply_pending(self) -> None:
        # aborts first: a request id may be reused as soon as its request was aborted
        aborts, self._aborts = self._aborts, []
        for rid in aborts:
            self.engine.abort_request(rid)
        adds, self._adds = self._adds, {}
        for parent in adds.values():
            self.engine.add_parent(parent)

    def _fail_all(self, error: BaseException) -> None:
        for queue in self.queues.values():
            queue.put_nowait(error)

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.engine.shutdown()
