"""Llama 3.1+ JSON tool calls: the whole output is one or more JSON objects separated by
";", optionally after <|python_tag|>, with the arguments under "parameters":

    {"name": "get_weather", "parameters": {"city": "Paris"}}
"""
import json

from pagedserve.server.tool_parsers.abstract import PartialCall, ToolParser, call_from, load_partial

PYTHON_TAG = "<|python_tag|>"
ARGS_KEYS = ("parameters", "arguments")


class Llama3JsonToolParser(ToolParser):
    def parse(self, text: str) -> tuple[int | None, list[PartialCall]]:
        body = text.lstrip()
        if body.startswith(PYTHON_TAG):
            body = body[len(PYTHON_TAG):].lstrip()
        if not body.startswith("{"):
            return None, []
        return 0, self._calls(body)

    @staticmethod
    def _calls(body: str) -> list[PartialCall]:
        decoder, calls, pos = json.JSONDecoder(), [], 0
        while pos < len(body):
            try:
                obj, pos = decoder.raw_decode(body, pos)
            except ValueError:  # the last call, still being written
                call = call_from(*load_partial(body[pos:]), ARGS_KEYS)
                return calls + [call] if call is not None else calls
            call = call_from(obj, True, ARGS_KEYS)
            if call is None:
                break
            calls.append(call)
            rest = body[pos:].lstrip()
            if not rest.startswith(";"):
                break
            pos = len(body) - len(rest[1:].lstrip())
        return calls

    def content_holdback(self, text: str) -> int:
        body = text.lstrip()
        # nothing but the start so far: it may yet become a call
        return len(text) if not body or PYTHON_TAG.startswith(body) else 0

    def adjust_skip_special_tokens(self) -> bool | None:
        return False
