"""`pagedserve serve`: the OpenAI-compatible server, with `vllm serve`'s flag names.

The parser imports no torch (so `--help` is instant); run() loads the server.
"""
import argparse
import os
import sys

API_KEY_ENV = "PAGEDSERVE_API_KEY"
BUNDLED_NAME = "stories260K"


def add_parser(subparsers) -> None:
    from pagedserve.engine.arg_utils import add_engine_args
    p = subparsers.add_parser(
        "serve", help="run the OpenAI-compatible server",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/completions, "
                    "/v1/chat/completions, /v1/models) with /health and Prometheus /metrics.")
    p.add_argument("model_tag", nargs="?", metavar="MODEL",
                   help="model folder or Hugging Face hub id (default: the bundled stories260K)")
    p.add_argument("--model", default=None, help="the same as MODEL")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="0.0.0.0", help="address to listen on")
    g.add_argument("--port", type=int, default=8000, help="port to listen on")
    g.add_argument("--served-model-name", nargs="+", default=None, metavar="NAME",
                   help="model name(s) the API accepts; the first is reported (default: MODEL, "
                        f"or {BUNDLED_NAME} for the bundled model)")
    g.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV} "
                        "if set); /health and /metrics stay open")
    g.add_argument("--chat-template", default=None,
                   help="Jinja chat template: a file or the template text (default: the "
                        "tokenizer's; without one, chat requests get 400)")
    g.add_argument("--generation-config", default="auto", metavar="auto|vllm|FOLDER",
                   help="default sampling values for fields a request leaves unset: auto = the "
                        "model's generation_config.json, vllm = vLLM's defaults, or a folder's "
                        "generation_config.json")
    g.add_argument("--max-queue-len", type=_non_negative(int), default=None,
                   help="when this many sequences already wait for a batch slot, new requests "
                        "get 503 with Retry-After (default: unbounded)")
    g.add_argument("--shutdown-timeout", type=_non_negative(float), default=30.0,
                   help="on SIGTERM, seconds to let in-flight requests finish before exiting; "
                        "/health turns 503 and new requests get 503 meanwhile")
    g.add_argument("--disable-frontend-multiprocessing", action="store_true",
                   help="run the engine inside the server process instead of its own engine "
                        "core process (slower: HTTP and engine share one core; for debugging)")
    _add_limit_args(p)
    _add_parsing_args(p)
    g.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="pagedserve's own log level; debug also prints tracebacks of start-up "
                        "errors (default: %(default)s)")
    add_engine_args(p)
    p.set_defaults(run=run)


def _add_limit_args(p: argparse.ArgumentParser) -> None:
    from pagedserve.server.limits import Limits
    d = Limits()
    g = p.add_argument_group("request limits", "beyond a limit a request gets 400 naming it "
                             "(413 for the body); prompt + max_tokens are bounded by "
                             "--max-model-len")
    g.add_argument("--max-request-body-bytes", type=_positive(int),
                   default=d.max_request_body_bytes, help="largest request body (default: "
                   f"{d.max_request_body_bytes})")
    g.add_argument("--max-n", type=_positive(int), default=d.max_n,
                   help="most sequences one request may ask for: n, times the number of "
                        f"prompts for a batched completion (default: {d.max_n})")
    g.add_argument("--max-logprobs", type=_non_negative(int), default=d.max_logprobs,
                   help="largest logprobs / top_logprobs (default: %(default)s, as vLLM)")
    g.add_argument("--max-stop-strings", type=_non_negative(int), default=d.max_stop_strings,
                   help="most entries in stop, and in stop_token_ids (default: %(default)s)")
    g.add_argument("--max-stop-length", type=_positive(int), default=d.max_stop_length,
                   help="longest stop string, in characters (default: %(default)s)")


def _add_parsing_args(p: argparse.ArgumentParser) -> None:
    from pagedserve.server.reasoning import REASONING_PARSERS
    from pagedserve.server.tool_parsers import TOOL_PARSERS
    g = p.add_argument_group("structured outputs, tool calling, reasoning")
    g.add_argument("--structured-outputs-config.backend", dest="so_backend", default="auto",
                   choices=["auto", "xgrammar"], help="grammar backend (default: auto = xgrammar)")
    g.add_argument("--structured-outputs-config.disable_any_whitespace", dest="so_compact",
                   type=_bool, default=False, metavar="true|false",
                   help="constrained JSON without free whitespace (small models may otherwise "
                        "emit newlines until max_tokens)")
    g.add_argument("--enable-auto-tool-choice", action="store_true",
                   help='parse tool calls out of the text for tool_choice "auto" (needs '
                        "--tool-call-parser)")
    g.add_argument("--tool-call-parser", choices=sorted(TOOL_PARSERS), default=None,
                   help="the model family's tool-call format")
    g.add_argument("--reasoning-parser", choices=sorted(REASONING_PARSERS), default=None,
                   help="split <think>...</think> into reasoning_content; constraints apply "
                        "to the answer after it")


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {text}")
    return text.lower() in ("true", "1")


def _structured_outputs_config(args: argparse.Namespace) -> dict:
    return {"backend": args.so_backend, "disable_any_whitespace": args.so_compact,
            "reasoning_parser": args.reasoning_parser or ""}


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
        return value
    return parse


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    return parse


def settings_from_args(args: argparse.Namespace):
    """ServeSettings from parsed flags; SystemExit with a message on conflicting input."""
    from pagedserve.engine.arg_utils import engine_kwargs_from_args
    from pagedserve.engine.loader import default_model
    from pagedserve.server.limits import Limits
    from pagedserve.server.state import ServeSettings
    if args.model_tag and args.model and args.model_tag != args.model:
        sys.exit(f"pagedserve serve: error: MODEL {args.model_tag!r} and --model "
                 f"{args.model!r} disagree; give one")
    model = args.model_tag or args.model
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        sys.exit("pagedserve serve: error: --enable-auto-tool-choice needs --tool-call-parser")
    names = args.served_model_name or [model or BUNDLED_NAME]
    return ServeSettings(
        model=model or default_model(), served_model_names=names,
        engine_kwargs={**engine_kwargs_from_args(args),
                       "structured_outputs_config": _structured_outputs_config(args)},
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        chat_template=_load_template(args.chat_template),
        max_queue_len=args.max_queue_len, shutdown_timeout=args.shutdown_timeout,
        engine_in_process=args.disable_frontend_multiprocessing,
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser,
        limits=Limits(args.max_request_body_bytes, args.max_n, args.max_logprobs,
                      args.max_stop_strings, args.max_stop_length))


def _load_template(value: str | None) -> str | None:
    if value is None or os.path.isfile(value):
        return value and open(value).read()
    if "{{" in value or "{%" in value:
        return value
    sys.exit(f"pagedserve serve: error: --chat-template {value!r} is neither a file nor a "
             "Jinja template")


def run(args: argparse.Namespace) -> int:
    from pagedserve.server.serve import serve
    from pagedserve.server.startup import resolve_engine_config
    settings = settings_from_args(args)
    settings.engine_config = resolve_engine_config(settings.model, settings.engine_kwargs,
                                                   debug=args.log_level == "debug")
    if settings.engine_config.node_rank > 0:  # headless: this node's workers, no HTTP
        import logging

        from pagedserve.engine.headless import run_headless
        logging.basicConfig(level=args.log_level.upper())
        return run_headless(settings.engine_config)
    return serve(settings, args.host, args.port, args.uvicorn_log_level, args.log_level)
