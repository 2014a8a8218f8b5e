"""Hermes-style tool calls (Qwen2.5, Qwen3, Hermes): each call is JSON between tags,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>
"""
from pagedserve.server.tool_parsers.abstract import (
    PartialCall,
    ToolParser,
    call_from,
    holdback,
    load_partial,
)

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    def parse(self, text: str) -> tuple[int | None, list[PartialCall]]:
        start = text.find(START)
        if start < 0:
            return None, []
        calls = []
        for segment in text[start + len(START):].split(START):
            body = segment.split(END, 1)[0].strip()
            call = call_from(*load_partial(body))
            if call is None:
                break
            calls.append(call)
            if not call.complete:
                break
        return start, calls

    def content_holdback(self, text: str) -> int:
        return holdback(text, START)
