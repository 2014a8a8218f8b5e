"""A request's constraint from its fields: response_format (json_object, json_schema),
vLLM's structured_outputs, and tool_choice required / a named function. Every problem is a
400 naming the field; the old guided_* fields are refused, naming their successor."""
import json
from dataclasses import fields
from typing import Any

from pagedserve.engine.structured_output import StructuredOutputsParams
from pagedserve.server.errors import invalid
from pagedserve.server.tool_parsers.tool_choice import tool_choice_schema

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar",
                 "guided_decoding_backend", "guided_whitespace_pattern")
_PARAMS_FIELDS = {f.name for f in fields(StructuredOutputsParams)}


def refuse_guided(given: dict[str, Any]) -> None:
    """guided_* were removed in vLLM 0.12: a 400 that says what to send instead."""
    for name in GUIDED_FIELDS:
        if given.get(name) is not None:
            kind = name.removeprefix("guided_")
            raise invalid(f"{name} is no longer supported (removed in vLLM 0.12); send "
                          f'"structured_outputs": {{"{kind}": ...}} instead', name)


def from_response_format(response_format: dict | None) -> StructuredOutputsParams | None:
    """OpenAI's response_format: text (no constraint), json_object or json_schema."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind != "json_schema":
        raise invalid(f"response_format.type must be text, json_object or json_schema, "
                      f"got {kind!r}", "response_format")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise invalid("response_format.json_schema.schema must be a JSON schema object",
                      "response_format")
    return StructuredOutputsParams(json=schema)


def from_structured_outputs(value: dict | None) -> StructuredOutputsParams | None:
    """vLLM's structured_outputs field: StructuredOutputsParams' fields as a JSON object."""
    if value is None:
        return None
    unknown = sorted(set(value) - _PARAMS_FIELDS)
    if unknown:
        raise invalid(f"structured_outputs has no field {unknown[0]!r} "
                      f"(known: {', '.join(sorted(_PARAMS_FIELDS))})", "structured_outputs")
    try:
        return StructuredOutputsParams(**value)
    except ValueError as e:
        raise invalid(str(e), "structured_outputs") from None


def from_tool_choice(tools: list[dict] | None, tool_choice: Any,
                     parallel_tool_calls: bool) -> StructuredOutputsParams | None:
    """required / a named function constrain decoding to calls of the tools."""
    if not tools or tool_choice in (None, "none", "auto"):
        return None
    try:
        schema = tool_choice_schema(tools, tool_choice, parallel_tool_calls)
    except (ValueError, KeyError, TypeError) as e:
        raise invalid(f"tool_choice: {e}", "tool_choice") from None
    return None if schema is None else StructuredOutputsParams(json=json.dumps(schema))


def request_constraint(body: dict[str, Any]) -> StructuredOutputsParams | None:
    """The one constraint a request asks for (None: free text). body holds the request's
    fields by name; at most one source may set a constraint."""
    refuse_guided(body)
    sources = {
        "response_format": lambda: from_response_format(body.get("response_format")),
        "structured_outputs": lambda: from_structured_outputs(body.get("structured_outputs")),
        "tool_choice": lambda: from_tool_choice(body.get("tools"), body.get("tool_choice"),
                                                body.get("parallel_tool_calls", True) is not False),
    }
    found = [(name, params) for name, make in sources.items() if (params := make()) is not None]
    if len(found) > 1:
        names = " and ".join(n for n, _ in found)
        raise invalid(f"{names} each constrain the output; give only one", found[1][0])
    return found[0][1] if found else None


