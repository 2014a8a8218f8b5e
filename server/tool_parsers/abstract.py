"""ToolParser: finds tool calls in a model's output, whole (a response) or as it streams.

A family's parser only says where its tool-call region starts and how the calls in it read
so far (parse); streaming is the same for every family: content up to the region, then for
each call its id and name once the name is complete, then argument fragments.
"""
import json
from dataclasses import dataclass
from typing import Any

from pagedserve.server.deltas import (
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCalls,
    ToolCall,
    tool_call_id,
)

# Only containers may be incomplete: a half string, number or literal is left out until it
# is whole, so what was parsed so far never changes meaning later.


@dataclass(slots=True)
class PartialCall:
    """One call as parsed so far; complete once its JSON is whole."""
    name: str | None
    arguments: Any
    complete: bool


def load_partial(text: str) -> tuple[Any, bool]:
    """(value, complete) of JSON text that may still be growing; (None, False) if unreadable."""
    try:
        return json.loads(text), True
    except ValueError:
        pass
    # imported here: the CLI lists the parsers at parse time, and the operator image, which
    # builds the same CLI, has no server extra
    from partial_json_parser import loads as partial_loads
    from partial_json_parser.core.options import Allow
    try:
        return partial_loads(text, Allow.ARR | Allow.OBJ), False
    except Exception:  # partial_json_parser raises its own types for text that is not JSON
        return None, False


def call_from(obj: Any, complete: bool, args_keys: tuple[str, ...] = ("arguments",)
              ) -> PartialCall | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name") if isinstance(obj.get("name"), str) else None
    args = next((obj[k] for k in args_keys if k in obj), None)
    if complete and args is None:
        args = {}
    return PartialCall(name, args, complete)


def arguments_text(call: PartialCall) -> str | None:
    """The arguments' JSON as it will finally read, or the part of it that cannot change."""
    if isinstance(call.arguments, str):  # some models write the arguments as a JSON string
        return call.arguments if call.complete else None
    if call.arguments is None:
        return None
    text = json.dumps(call.arguments, ensure_ascii=False)
    return text if call.complete else text.rstrip("}]")


def holdback(text: str, marker: str) -> int:
    """Length of the longest end of text that could be the start of marker."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolParser:
    """Base class; one instance per generated sequence (streaming keeps state)."""

    def __init__(self, tokenizer=None) -> None:
        self.tokenizer = tokenizer
        self._content_sent = 0
        self._ids: list[str] = []
        self._args_sent: list[str] = []

    def parse(self, text: str) -> tuple[int | None, list[PartialCall]]:
        """Where the tool-call region starts (None: no calls) and the calls in it so far."""
        raise NotImplementedError

    def content_holdback(self, text: str) -> int:
        """How much of the end of text might still turn into the region's start."""
        raise NotImplementedError

    def new_id(self) -> str:
        return tool_call_id()

    def adjust_skip_special_tokens(self) -> bool | None:
        """False if the family's markers are special tokens the text must keep."""
        return None

    def extract_tool_calls(self, text: str) -> ExtractedToolCalls:
        """A whole output: complete calls only (a call cut short is no call)."""
        start, calls = self.parse(text)
        done = [ToolCall(c.name, arguments_text(c), self.new_id()) for c in calls
                if c.complete and c.name is not None]
        if start is None or not done:
            return ExtractedToolCalls(False, [], text)
        return ExtractedToolCalls(True, done, text[:start].strip() or None)

    def extract_tool_calls_streaming(self, current_text: str) -> DeltaMessage | None:
        """The delta since the last call, given all text generated so far."""
        start, calls = self.parse(current_text)
        end = start if start is not None else len(current_text) - self.content_holdback(
            current_text)
        delta = DeltaMessage()
        if end > self._content_sent:
            delta.content = current_text[self._content_sent:end]
            self._content_sent = end
        for index, call in enumerate(calls):
            if not self._stream_call(index, call, delta) or not call.complete:
                break
        return None if delta.is_empty() else delta

    def _stream_call(self, index: int, call: PartialCall, delta: DeltaMessage) -> bool:
        if index == len(self._ids):
            if call.name is None:
                return False
            self._ids.append(self.new_id())
            self._args_sent.append("")
            delta.tool_calls.append(DeltaToolCall(index, "", self._ids[index], call.name))
        args, sent = arguments_text(call), self._args_sent[index]
        if args is not None and len(args) > len(sent) and args.startswith(sent):
            delta.tool_calls.append(DeltaToolCall(index, args[len(sent):]))
            self._args_sent[index] = args
        return True

    def finish_streaming(self, final_text: str) -> DeltaMessage | None:
        """At the end of the stream: if no call came, the text not sent yet is content (what
        extract_tool_calls answers for the whole text)."""
        if self._ids or self._content_sent >= len(final_text):
            return None
        delta = DeltaMessage(content=final_text[self._content_sent:])
        self._content_sent = len(final_text)
        return delta

    @property
    def num_streamed_calls(self) -> int:
        return len(self._ids)
