"""Tool-call parsers by their vLLM names (--tool-call-parser NAME)."""
from pagedserve.server.tool_parsers.abstract import ToolParser
from pagedserve.server.tool_parsers.hermes import HermesToolParser
from pagedserve.server.tool_parsers.llama import Llama3JsonToolParser
from pagedserve.server.tool_parsers.mistral import MistralToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
}


def get_tool_parser(name: str) -> type[ToolParser]:
    """The parser class for --tool-call-parser NAME; ValueError naming the known ones."""
    if name not in TOOL_PARSERS:
        raise ValueError(f"unknown --tool-call-parser {name!r} "
                         f"(known: {', '.join(sorted(TOOL_PARSERS))})")
    return TOOL_PARSERS[name]


__all__ = ["TOOL_PARSERS", "ToolParser", "get_tool_parser"]
