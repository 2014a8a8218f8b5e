"""What one server process knows: its settings, the engine (once loaded), metrics, lifecycle."""
import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pagedserve.engine.async_engine import AsyncLLMEngine, EngineDeadError
from pagedserve.engine.config import EngineConfig
from pagedserve.engine.protocol import EngineClient
from pagedserve.server.errors import APIError
from pagedserve.server.limits import Limits
from pagedserve.server.metrics import Metrics

logger = logging.getLogger("pagedserve.server")


@dataclass(slots=True)
class ServeSettings:
    """`pagedserve serve` options that are not the engine's."""
    model: str
    served_model_names: list[str]
    engine_kwargs: dict = field(default_factory=dict)
    api_key: str | None = field(default=None, repr=False)  # never logged
    chat_template: str | None = None
    max_queue_len: int | None = None
    shutdown_timeout: float = 30.0
    limits: Limits = field(default_factory=Limits)
    engine_in_process: bool = False  # True: no engine core process (for debugging)
    # tool calling and reasoning (vLLM's flags of the same names)
    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    # settled before the server starts (server/startup.py); built from the above when absent
    engine_config: EngineConfig | None = None


def freeze_startup_heap() -> None:
    """What is alive once the engine is loaded (the app, the tokenizer, torch's and
    pydantic's modules: ~320k objects) lives as long as the server process. A full
    collection walked all of it in 120-160 ms, with every stream on the event loop stalled
    meanwhile; frozen, the collector no longer visits it. Only in the process `pagedserve
    serve` starts: frozen objects are never freed, which an app embedded in a longer-lived
    process (a test run building many) must not have."""
    gc.collect()
    gc.freeze()


class ServerState:
    """Shared by the routes. `request_exit` is set by whoever runs the server (uvicorn)."""

    def __init__(self, settings: ServeSettings, engine: EngineClient | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = Metrics(settings.served_model_names[0], lambda: self.engine)
        self.draining = False
        self.in_flight = 0  # /v1 requests being answered, streams included
        self.exit_code = 0
        self.request_exit: Callable[[], None] = lambda: None

    @property
    def model_name(self) -> str:
        return self.settings.served_model_names[0]

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.is_running and not self.draining

    def engine_or_raise(self) -> EngineClient:
        if self.engine is None:
            raise APIError(503, "the model is still loading", headers={"Retry-After": "5"})
        if self.engine.dead_error is not None:
            raise EngineDeadError(f"the engine has stopped: {self.engine.dead_error!r}")
        return self.engine

    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.settings.served_model_names:
            raise APIError(404, f"The model `{name}` does not exist; this server serves "
                           f"`{self.model_name}`.", "model", "model_not_found")

    def admit(self) -> None:
        """Refuse new work while the queue is full (--max-queue-len) rather than queue it."""
        limit = self.settings.max_queue_len
        waiting = self.engine.stats().num_waiting
        if limit is not None and waiting >= limit:
            raise APIError(503, f"the server is busy: {waiting} sequences are "
                           f"waiting (--max-queue-len {limit}); retry later",
                           code="queue_full", headers={"Retry-After": "1"})

    # ---- lifecycle: load, watch, drain ----

    async def load_engine(self) -> None:
        config = self.settings.engine_config or EngineConfig(model=self.settings.model,
                                                             **self.settings.engine_kwargs)
        try:
            self.engine = await asyncio.to_thread(AsyncLLMEngine.from_config, config,
                                                  self.settings.engine_in_process)
        except Exception:
            logger.exception("could not load the model %r", self.settings.model)
            self.exit(1)
            return
        freeze_startup_heap()
        self.start_engine()
        await self.watch_engine()

    def start_engine(self) -> None:
        self.engine.start()
        self.metrics.tick()  # the throughput window starts when the engine does
        logger.info("engine ready: %s (max_model_len %d)", self.model_name,
                    self.engine.config.max_model_len)

    async def watch_engine(self) -> None:
        """When the engine loop dies, in-flight requests fail (the engine errors them), health
        turns 503, and the process exits non-zero so its supervisor restarts it."""
        while self.engine.is_running:
            await asyncio.sleep(0.2)
        if self.engine.dead_error is None:
            return  # shut down on purpose
        logger.error("the engine loop died (%r); exiting once in-flight requests have their "
                     "errors", self.engine.dead_error)
        self.exit_code = 1
        await self.wait_in_flight(5.0)
        self.exit(1)

    async def drain(self) -> None:
        """SIGTERM: fail readiness, refuse new work, let in-flight requests finish up to
        --shutdown-timeout, then stop."""
        if self.draining:
            return
        self.draining = True
        logger.info("draining: %d requests in flight, waiting up to %.0f s (a second signal "
                    "stops now)", self.in_flight, self.settings.shutdown_timeout)
        if not await self.wait_in_flight(self.settings.shutdown_timeout):
            logger.warning("shutdown timeout: %d requests are cut off", self.in_flight)
        self.exit(self.exit_code)

    async def wait_in_flight(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.in_flight

    def exit(self, code: int) -> None:
        self.exit_code = self.exit_code or code
        self.request_exit()

    async def tick_metrics(self) -> None:
        while True:
            self.metrics.tick()
            await asyncio.sleep(1.0)
