"""tool_choice "required" and a named function: the JSON schema that constrains decoding to
valid calls of the request's tools (so any model, even a tiny one, returns calls whose
arguments validate), and how the constrained output becomes tool calls.

A named function's output is its arguments object. "required" outputs an array of
{"name", "parameters"} objects, at least one, at most one unless parallel_tool_calls.
"""
import copy
import json

from pagedserve.server.deltas import ToolCall
from pagedserve.server.tool_parsers.abstract import PartialCall, ToolParser, load_partial
from pagedserve.server.tool_parsers.mistral import array_calls

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def _functions(tools: list[dict]) -> dict[str, dict]:
    return {t["function"]["name"]: t["function"] for t in tools}


def _parameters(function: dict, defs: dict) -> dict:
    """The function's parameters schema, its $defs moved into the shared defs: references
    like "#/$defs/Item" resolve against the root of the schema we build."""
    params = copy.deepcopy(function.get("parameters") or EMPTY_PARAMETERS)
    for name, schema in params.pop("$defs", {}).items():
        if defs.setdefault(name, schema) != schema:
            raise ValueError(f"tools define $defs/{name} differently; rename one of them")
    return params


def named_function(tool_choice: dict | str) -> str | None:
    """The function a tool_choice names, or None ("none", "auto", "required")."""
    if isinstance(tool_choice, dict):
        return tool_choice["function"]["name"]
    return None


def tool_choice_schema(tools: list[dict], tool_choice: dict | str,
                       parallel_tool_calls: bool = True) -> dict | None:
    """The schema decoding must follow for this tool_choice, or None (no constraint)."""
    functions = _functions(tools)
    defs: dict = {}
    name = named_function(tool_choice)
    if name is not None:
        if name not in functions:
            raise ValueError(f"tool_choice names the function {name!r}, which is not in tools")
        schema = _parameters(functions[name], defs)
    elif tool_choice == "required":
        schema = {"type": "array", "minItems": 1, "items": {"anyOf": [
            {"type": "object", "properties": {"name": {"type": "string", "enum": [fname]},
                                              "parameters": _parameters(f, defs)},
             "required": ["name", "parameters"], "additionalProperties": False}
            for fname, f in functions.items()]}}
        if not parallel_tool_calls:
            schema["maxItems"] = 1
    else:
        return None
    if defs:
        schema["$defs"] = {**schema.get("$defs", {}), **defs}
    return schema


def named_function_call(name: str, text: str) -> ToolCall | None:
    """A named function's constrained output is the arguments object itself; None if it was
    cut short (max_tokens) and is no whole object."""
    try:
        args = json.loads(text)
    except ValueError:
        return None
    # written as the streamed arguments are, so both read the same
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def required_calls(text: str) -> list[ToolCall]:
    """The calls in a complete "required" output (ValueError if it is not one)."""
    calls = json.loads(text)
    return [ToolCall(c["name"], json.dumps(c["parameters"], ensure_ascii=False))
            for c in calls]


class RequiredToolParser(ToolParser):
    """Streams a "required" output (a JSON array of calls) like any family's calls."""

    def parse(self, text: str) -> tuple[int | None, list[PartialCall]]:
        if not text.lstrip().startswith("["):
            return None, []
        return 0, array_calls(text.strip(), ("parameters",))

    def content_holdback(self, text: str) -> int:
        return len(text)  # all of a constrained output is calls


class NamedToolParser(ToolParser):
    """Streams a named function's output (its arguments object) as that one call."""

    def __init__(self, name: str, tokenizer=None) -> None:
        super().__init__(tokenizer)
        self.name = name

    def parse(self, text: str) -> tuple[int | None, list[PartialCall]]:
        value, complete = load_partial(text.strip())
        return 0, [PartialCall(self.name, value if isinstance(value, dict) else None, complete)]

    def content_holdback(self, text: str) -> int:
        return len(text)
