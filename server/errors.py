"""Every failure leaves as OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pagedserve.server.protocol import ErrorInfo

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
          404: "invalid_request_error", 405: "invalid_request_error",
          413: "invalid_request_error",
          500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error answered to the client as-is."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code, self.headers = code, headers


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def check_unicode(text: str, param: str) -> str:
    """JSON may carry lone surrogates ("\\ud800"), which no tokenizer can encode: 400, not 500."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise invalid(f"{param} is not valid Unicode: {e.reason} at position {e.start}",
                      param) from None
    return text


def from_value_error(e: ValueError, fields: set[str]) -> APIError:
    """SamplingParams and the tokenizer start their messages with the bad field's name."""
    first = str(e).split(" ", 1)[0]
    return invalid(str(e), first if first in fields else None)


def error_info(status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict:
    kind = _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": ErrorInfo(message=message, type=kind, param=param, code=code).model_dump()}


def error_response(status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_info(status, message, param, code), status, headers=headers)


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One message naming the field. A value matching none of a union's types fails once per
    type, all at the same field: report them together there."""
    if errors[0].get("type") == "json_invalid":
        reason = errors[0].get("ctx", {}).get("error", errors[0]["msg"])
        return f"request body is not valid JSON: {reason}", None
    locs = [[str(p) for p in e.get("loc", ()) if p != "body"] for e in errors]
    common = locs[0]
    for loc in locs[1:]:
        n = 0
        while n < min(len(common), len(loc)) and common[n] == loc[n]:
            n += 1
        common = common[:n]
    if len(errors) == 1 or not common:
        common, msg = locs[0], errors[0]["msg"]
    else:
        msg = " or ".join(dict.fromkeys(e["msg"] for e in errors))
    field = ".".join(common) or None
    return (f"{field}: {msg}" if field else f"request body: {msg}"), field


def install_error_handlers(app: FastAPI) -> None:
    # imported here: the CLI's parser reads limits.py, which uses this module, without torch
    from pagedserve.engine.async_engine import EngineDeadError

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(list(e.errors()))
        return error_response(400, message, field)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else HTTPStatus(e.status_code).phrase
        return error_response(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_: Request, e: EngineDeadError) -> JSONResponse:
        return error_response(500, str(e), code="engine_dead")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:
        # Starlette logs the traceback after this answer is sent
        return error_response(500, f"internal error: {type(e).__name__}")
