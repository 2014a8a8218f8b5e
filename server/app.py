"""The FastAPI app: OpenAI routes, health, metrics, tokenizer helpers, the API-key gate."""
import asyncio
import contextlib
import hmac

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from pagedserve import __version__
from pagedserve.engine.protocol import EngineClient
from pagedserve.server.chat import create_chat_completion
from pagedserve.server.completions import create_completion
from pagedserve.server.errors import error_response, install_error_handlers, invalid
from pagedserve.server.limits import BodyLimit
from pagedserve.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from pagedserve.server.state import ServerState, ServeSettings
from pagedserve.server.tokenize import tokenize as tokenize_request

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 500, 503)}
# text/event-stream: the schema of each event; `data` is a JSON chunk, or "[DONE]" at the end
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}


class Gate:
    """ASGI middleware for /v1: the API key, refusal while draining, the in-flight count
    (streams included) that a graceful shutdown waits for."""

    def __init__(self, app, state: ServerState) -> None:
        self.app, self.state = app, state
        key = state.settings.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        if self.expected is not None:
            given = [v for k, v in scope["headers"] if k == b"authorization"]
            # constant-time; two headers are refused, as a proxy may have read the other one
            if len(given) != 1 or not hmac.compare_digest(given[0], self.expected):
                response = error_response(401, "invalid or missing API key: send "
                                          "'Authorization: Bearer <key>'", code="invalid_api_key")
                return await response(scope, receive, send)
        if self.state.draining:
            response = error_response(503, "the server is shutting down", code="shutting_down",
                                      headers={"Retry-After": "1"})
            return await response(scope, receive, send)
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


def build_app(settings: ServeSettings, engine: EngineClient | None = None) -> FastAPI:
    """The server app; without `engine` it loads settings.model in the background at startup
    (so /health can answer 503 meanwhile)."""
    state = ServerState(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if state.engine is None:
            watcher = asyncio.create_task(state.load_engine())
        else:
            state.start_engine()
            watcher = asyncio.create_task(state.watch_engine())
        ticker = asyncio.create_task(state.tick_metrics())
        yield
        for task in (watcher, ticker):
            task.cancel()
        await asyncio.gather(watcher, ticker, return_exceptions=True)
        if state.engine is not None:
            await state.engine.shutdown()

    app = FastAPI(title="pagedserve", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM server over the pagedserve engine.")
    app.state.server = state
    app.add_middleware(Gate, state=state)
    # added last, so it runs first: an oversized body is refused before anything else
    app.add_middleware(BodyLimit, limit=settings.limits.max_request_body_bytes)
    install_error_handlers(app)
    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    for router in (_ops_router(state), _openai_router(state), _tokenizer_router(state)):
        app.include_router(router)


def _ops_router(state: ServerState) -> APIRouter:
    """What Kubernetes and Prometheus ask: readiness, metrics, the version."""
    router = APIRouter()

    @router.get("/health", responses={503: {"model": ErrorResponse}})
    async def health():
        """200 once the engine is loaded and running; 503 while loading, draining or dead."""
        if state.ready:
            return {"status": "ok"}
        reason = ("draining" if state.draining else "loading" if state.engine is None
                  else "engine stopped")
        return error_response(503, f"not ready: {reason}", code=reason.replace(" ", "_"))

    @router.get("/metrics", response_class=Response)
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/version")
    async def version():
        return {"version": __version__}
    return router


def _openai_router(state: ServerState) -> APIRouter:
    """The OpenAI API under /v1."""
    router = APIRouter()

    @router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models():
        engine = state.engine_or_raise()
        config = engine.config
        return ModelList(data=[ModelCard(id=name, root=state.settings.model,
                                         max_model_len=config.max_model_len)
                               for name in state.settings.served_model_names])

    @router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=_ERRORS)
    async def model(model_id: str):
        """One served model; 404 in OpenAI's shape for a name this server does not serve."""
        engine = state.engine_or_raise()
        state.check_model(model_id)
        return ModelCard(id=model_id, root=state.settings.model,
                         max_model_len=engine.config.max_model_len)

    @router.post("/v1/completions", response_model=CompletionResponse,
                 responses={**_ERRORS, 200: {"content": _SSE}})
    async def completions(body: CompletionRequest, request: Request):
        """OpenAI completions; `stream: true` answers with server-sent events."""
        return await create_completion(state, body, request)

    @router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
                 responses={**_ERRORS, 200: {"content": _SSE}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        """OpenAI chat completions; `stream: true` answers with server-sent events."""
        return await create_chat_completion(state, body, request)
    return router


def _tokenizer_router(state: ServerState) -> APIRouter:
    """vLLM's /tokenize and /detokenize."""
    router = APIRouter()

    @router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: TokenizeRequest):
        return tokenize_request(state, body)

    @router.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest):
        engine = state.engine_or_raise()
        state.check_model(body.model)
        vocab = engine.config.model_config.vocab_size
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise invalid(f"token id {bad[0]} is outside the vocabulary [0, {vocab})", "tokens")
        return DetokenizeResponse(prompt=engine.tokenizer.decode(body.tokens))
    return router
