"""What the chat parsers (tool calls, reasoning) hand to the chat endpoint: whole tool calls
for a response, and per-chunk deltas for a stream (OpenAI's shapes, as plain dataclasses)."""
import uuid
from dataclasses import dataclass, field


def tool_call_id() -> str:
    """vLLM's id for a tool call."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


@dataclass(slots=True)
class ToolCall:
    """message.tool_calls[i]: arguments is the JSON text of the call's arguments."""
    name: str
    arguments: str
    id: str = field(default_factory=tool_call_id)
    type: str = "function"

    def to_dict(self) -> dict:
        return {"id": self.id, "type": self.type,
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class DeltaToolCall:
    """delta.tool_calls[i]: the first delta of a call carries id, type and name; the later
    ones only argument fragments, which concatenate to the call's arguments."""
    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"index": self.index}
        function: dict = {"arguments": self.arguments}
        if self.id is not None:
            out.update(id=self.id, type="function")
            function["name"] = self.name
        out["function"] = function
        return out


@dataclass(slots=True)
class DeltaMessage:
    """What one streamed step adds: text, thinking text, tool call pieces."""
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.content or self.reasoning_content or self.tool_calls)

    def to_dict(self) -> dict:
        """The chunk's delta: only the parts this step has."""
        out: dict = {}
        if self.reasoning_content:
            out["reasoning_content"] = self.reasoning_content
        if self.content:
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = [t.to_dict() for t in self.tool_calls]
        return out


@dataclass(slots=True)
class ExtractedToolCalls:
    """A whole response's split: the calls found and the text left as content."""
    tools_called: bool
    tool_calls: list[ToolCall]
    content: str | None
