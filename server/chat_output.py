"""A chat choice's text as the client sees it: thinking split off (--reasoning-parser), tool
calls parsed out (auto with --tool-call-parser, or the constrained output of tool_choice
required / a named function), and the finish_reason OpenAI and vLLM give for each case.

One ChatOutputParser per choice; whole() for a response, delta()/finish() for a stream.
"""
from pagedserve.server.deltas import DeltaMessage, ToolCall
from pagedserve.server.reasoning import ThinkReasoningParser
from pagedserve.server.tool_parsers import ToolParser, get_tool_parser
from pagedserve.server.tool_parsers.tool_choice import (
    NamedToolParser,
    RequiredToolParser,
    named_function,
    named_function_call,
    required_calls,
)


def tool_mode(tools: list | None, tool_choice) -> str:
    """none, auto, required or named (tools alone imply auto, as in OpenAI and vLLM)."""
    if not tools or tool_choice == "none":
        return "none"
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    return "required" if tool_choice == "required" else "named"


def check_tool_choice(mode: str, tool_call_parser: str | None,
                      enable_auto_tool_choice: bool) -> None:
    """vLLM's rule: auto needs both flags (ValueError naming them)."""
    if mode == "auto" and not (enable_auto_tool_choice and tool_call_parser):
        raise ValueError('"auto" tool choice requires --enable-auto-tool-choice and '
                         '--tool-call-parser to be set')


class ChatOutputParser:
    def __init__(self, mode: str, tool_choice=None, tool_parser: str | None = None,
                 reasoning: ThinkReasoningParser | None = None, tokenizer=None,
                 prompt_token_ids: list[int] | None = None,
                 parallel_tool_calls: bool = True) -> None:
        self.mode = mode
        self.parallel_tool_calls = parallel_tool_calls
        self.reports_reasoning = reasoning is not None
        # a prompt whose template closed the thinking (thinking off): all output is answer,
        # as vLLM decides from the prompt's tokens
        if reasoning is not None and reasoning.is_reasoning_end(prompt_token_ids or []):
            reasoning = None
        self.reasoning = reasoning
        self.tools: ToolParser | None = None
        self._sent = 0  # text streamed when neither parser is in play
        if mode == "auto":
            self.tools = get_tool_parser(tool_parser)(tokenizer)
        elif mode == "required":
            self.tools = RequiredToolParser(tokenizer)
        elif mode == "named":
            self.name = named_function(tool_choice)
            self.tools = NamedToolParser(self.name, tokenizer)

    def _finish_reason(self, called: bool, finish_reason: str | None) -> str | None:
        # a call cut by max_tokens stays "length"; a named function ends "stop" (OpenAI)
        if called and finish_reason != "length" and self.mode in ("auto", "required"):
            return "tool_calls"
        return finish_reason

    def _calls(self, content: str, finish_reason: str | None) -> tuple[list[ToolCall], str | None]:
        if self.mode == "auto":
            found = self.tools.extract_tool_calls(content)
            # parallel_tool_calls false: the first call only (required mode's schema already
            # allows one)
            calls = found.tool_calls if self.parallel_tool_calls else found.tool_calls[:1]
            return calls, found.content or None
        if self.mode == "none" or finish_reason == "length":
            return [], content or None
        if self.mode == "required":
            try:
                return required_calls(content), None
            except (ValueError, KeyError, TypeError):
                return [], content or None
        call = named_function_call(self.name, content)
        return ([call], None) if call is not None else ([], content or None)

    def _allowed(self, calls: list) -> list:
        """Stream deltas of the calls a response would keep (the first, unless parallel)."""
        return calls if self.parallel_tool_calls else [c for c in calls if c.index == 0]

    def whole(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """(message, finish_reason) of a finished choice."""
        reasoning, content = (self.reasoning.extract_reasoning(text) if self.reasoning
                              else (None, text))
        calls, content = self._calls(content or "", finish_reason)
        message = {"role": "assistant", "content": content,
                   "tool_calls": [c.to_dict() for c in calls]}
        if self.reports_reasoning:
            message["reasoning_content"] = reasoning
        return message, self._finish_reason(bool(calls), finish_reason)

    def _content_so_far(self, text: str, out: DeltaMessage) -> str | None:
        """Feeds the reasoning parser; the answer text so far when a tool parser reads it."""
        if self.reasoning is None:
            return text
        delta = self.reasoning.extract_reasoning_streaming(text)
        if delta is not None:
            out.reasoning_content = delta.reasoning_content
            if self.tools is None:
                out.content = delta.content
        return self.reasoning.content_of(text) if self.tools is not None else None

    def delta(self, text: str) -> DeltaMessage | None:
        """What the stream sends now, given the choice's text so far."""
        out = DeltaMessage()
        content = self._content_so_far(text, out)
        if self.tools is not None:
            got = self.tools.extract_tool_calls_streaming(content)
            if got is not None:
                out.content, out.tool_calls = got.content, self._allowed(got.tool_calls)
        elif self.reasoning is None:
            out.content, self._sent = text[self._sent:], len(text)
        return None if out.is_empty() else out

    def finish(self, text: str, finish_reason: str | None) -> tuple[DeltaMessage | None,
                                                                   str | None]:
        """The last delta (what was held back) and the stream's finish_reason."""
        out = DeltaMessage()
        if self.reasoning is not None:
            last = self.reasoning.finish_streaming(text)
            if last is not None:
                out.reasoning_content = last.reasoning_content
                if self.tools is None:
                    out.content = last.content
        if self.tools is not None:
            content = ((self.reasoning.extract_reasoning(text)[1] or "") if self.reasoning
                       else text)
            for got in (self.tools.extract_tool_calls_streaming(content),
                        self.tools.finish_streaming(content)):
                if got is not None:
                    out.content = (out.content or "") + (got.content or "") or None
                    out.tool_calls += self._allowed(got.tool_calls)
        called = self.tools is not None and self.tools.num_streamed_calls > 0
        return (None if out.is_empty() else out), self._finish_reason(called, finish_reason)

