"""Run the app under uvicorn with Kubernetes-friendly signals and exit codes."""
import asyncio
import logging
import os

import uvicorn

from pagedserve.engine.core_process import LOG_FORMAT
from pagedserve.server.app import build_app
from pagedserve.server.state import ServerState, ServeSettings

logger = logging.getLogger("pagedserve.server")
EXIT_INTERRUPTED = 130


class DrainingServer(uvicorn.Server):
    """uvicorn whose first SIGTERM/SIGINT drains (ServerState.drain) instead of stopping at
    once; a second signal stops now. Signals are not re-raised afterwards, so a drained
    server exits 0."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None
        state.request_exit = self.stop

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.started and self.loop is not None and not self.state.draining:
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.state.drain()))
        elif self.state.draining:
            self.stop_now()
        else:
            self.should_exit = True

    def stop_now(self) -> None:
        """A second signal while draining: leave at once, quietly, with 128 + SIGINT as a
        shell does. The engine core sees its pipe close and exits; its workers follow it."""
        logger.warning("second signal while draining: stopping now, %d requests cut off",
                       self.state.in_flight)
        logging.shutdown()
        os._exit(EXIT_INTERRUPTED)

    def stop(self) -> None:
        self.should_exit = True


def serve(settings: ServeSettings, host: str, port: int, log_level: str = "info",
          own_log_level: str = "info") -> int:
    """Serve until drained (exit code 0) or until the engine dies or fails to load (1)."""
    logging.basicConfig(level=own_log_level.upper(), format=LOG_FORMAT)
    app = build_app(settings)
    state: ServerState = app.state.server
    # the drain already waited for requests; this only bounds closing the connections
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=1)
    logger.info("serving %s as %s on http://%s:%d%s", settings.model,
                ", ".join(settings.served_model_names), host, port,
                " (API key required on /v1)" if settings.api_key else "")
    DrainingServer(config, state).run()
    return state.exit_code
