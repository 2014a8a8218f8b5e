"""Mistral tool calls after the [TOOL_CALLS] token: a JSON array (tokenizers before v11),

    [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]

or, from v11, one name and its arguments per call: [TOOL_CALLS]get_weather[ARGS]{"city": ...}.
Mistral's chat templates accept only 9-character alphanumeric call ids.
"""
import random
import string

from pagedserve.server.tool_parsers.abstract import (
    PartialCall,
    ToolParser,
    call_from,
    holdback,
    load_partial,
)

START, ARGS = "[TOOL_CALLS]", "[ARGS]"
_ID_CHARS = string.ascii_letters + string.digits


def array_calls(body: str, args_keys: tuple[str, ...] = ("arguments",)) -> list[PartialCall]:
    """Calls in a JSON array that may still be growing: all but the last are whole."""
    value, complete = load_partial(body)
    if not isinstance(value, list):
        return []
    calls = []
    for i, obj in enumerate(value):
        call = call_from(obj, complete or i < len(value) - 1, args_keys)
        if call is None:
            break
        calls.append(call)
    return calls


class MistralToolParser(ToolParser):
    def parse(self, text: str) -> tuple[int | None, list[PartialCall]]:
        start = text.find(START)
        if start < 0:
            return None, []
        body = text[start + len(START):]
        if ARGS not in body:
            return start, array_calls(body.strip())
        calls = []
        for segment in body.split(START):
            name, sep, args = segment.partition(ARGS)
            if not sep:  # the name is whole only once [ARGS] follows it
                break
            value, complete = load_partial(args.strip())
            calls.append(PartialCall(name.strip() or None, value, complete))
            if not complete:
                break
        return start, calls

    def content_holdback(self, text: str) -> int:
        return holdback(text, START)

    def new_id(self) -> str:
        return "".join(random.choices(_ID_CHARS, k=9))

    def adjust_skip_special_tokens(self) -> bool | None:
        return False
