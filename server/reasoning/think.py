"""<think>...</think> reasoning parsers: the thinking goes to reasoning_content, the rest to
content, for a whole output and as it streams (the stream's pieces add up to the whole's)."""
from pagedserve.engine.structured_output.reasoning import THINK_TOKENS, ReasoningEnd
from pagedserve.server.deltas import DeltaMessage
from pagedserve.server.tool_parsers.abstract import holdback


class ThinkReasoningParser:
    """Base: a parser refuses to start when its think tags are not tokens of the tokenizer.

    starts_thinking says whether an output with no opening tag is thinking from its first
    token (DeepSeek-R1's templates put <think> in the prompt) or plain content (Qwen3 with
    thinking off writes no tags).
    """
    name = ""
    starts_thinking = True

    def __init__(self, tokenizer) -> None:
        self.reasoning_end = ReasoningEnd.for_parser(self.name, tokenizer)
        self.start, self.end = THINK_TOKENS[self.name]
        self._sent_reasoning = 0
        self._sent_content = 0

    def _split(self, text: str, streaming: bool) -> tuple[str, str, bool]:
        """(reasoning, content, undecided): undecided while text may still open a tag."""
        body = text.lstrip()
        if streaming and self.start.startswith(body) and body != self.start:
            return "", "", True
        if body.startswith(self.start):
            body = body[len(self.start):]
        elif not self.starts_thinking:
            return "", text, False
        reasoning, tag, content = body.partition(self.end)
        if not tag and streaming:
            reasoning = reasoning[:len(reasoning) - holdback(reasoning, self.end)]
        return reasoning, content, False

    def extract_reasoning(self, text: str) -> tuple[str | None, str | None]:
        """(reasoning_content, content) of a whole output; None for an empty part."""
        reasoning, content, _ = self._split(text, streaming=False)
        return reasoning or None, content or None

    def extract_reasoning_streaming(self, current_text: str) -> DeltaMessage | None:
        """What is new since the last call, given all text generated so far."""
        reasoning, content, undecided = self._split(current_text, streaming=True)
        if undecided:
            return None
        delta = DeltaMessage()
        if len(reasoning) > self._sent_reasoning:
            delta.reasoning_content = reasoning[self._sent_reasoning:]
            self._sent_reasoning = len(reasoning)
        if len(content) > self._sent_content:
            delta.content = content[self._sent_content:]
            self._sent_content = len(content)
        return None if delta.is_empty() else delta

    def finish_streaming(self, final_text: str) -> DeltaMessage | None:
        """At the end: what was held back (a partial tag that never completed)."""
        reasoning, content, _ = self._split(final_text, streaming=False)
        delta = DeltaMessage(content=content[self._sent_content:] or None,
                             reasoning_content=reasoning[self._sent_reasoning:] or None)
        self._sent_reasoning, self._sent_content = len(reasoning), len(content)
        return None if delta.is_empty() else delta

    def is_reasoning_end(self, token_ids: list[int]) -> bool:
        return self.reasoning_end.is_reasoning_end(token_ids)

    def content_of(self, text: str) -> str:
        """The answer part of a stream's text so far (what a tool parser reads)."""
        return self._split(text, streaming=True)[1]


class DeepSeekR1ReasoningParser(ThinkReasoningParser):
    name = "deepseek_r1"
    starts_thinking = True


class Qwen3ReasoningParser(ThinkReasoningParser):
    name = "qwen3"
    starts_thinking = False
