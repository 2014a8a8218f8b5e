"""Reasoning parsers by their vLLM names (--reasoning-parser NAME)."""
from pagedserve.server.reasoning.think import (
    DeepSeekR1ReasoningParser,
    Qwen3ReasoningParser,
    ThinkReasoningParser,
)

REASONING_PARSERS: dict[str, type[ThinkReasoningParser]] = {
    "deepseek_r1": DeepSeekR1ReasoningParser,
    "qwen3": Qwen3ReasoningParser,
}


def get_reasoning_parser(name: str) -> type[ThinkReasoningParser]:
    """The parser class for --reasoning-parser NAME; ValueError naming the known ones."""
    if name not in REASONING_PARSERS:
        raise ValueError(f"unknown --reasoning-parser {name!r} "
                         f"(known: {', '.join(sorted(REASONING_PARSERS))})")
    return REASONING_PARSERS[name]


__all__ = ["REASONING_PARSERS", "ThinkReasoningParser", "get_reasoning_parser"]
