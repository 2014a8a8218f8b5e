"""GrammarSpec: a request's constraint in the form a backend compiles (and the cache keys on)."""
import json
from dataclasses import dataclass

from pagedserve.engine.structured_output.config import StructuredOutputsConfig
from pagedserve.engine.structured_output.params import StructuredOutputsParams

# json_object is "some JSON object", as OpenAI's JSON mode promises
JSON_OBJECT_SCHEMA = '{"type": "object"}'


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """kind is "json", "regex" or "grammar"; text is the schema's JSON, the regex or the EBNF;
    any_whitespace lets JSON carry free whitespace between tokens."""
    kind: str
    text: str
    any_whitespace: bool = True


def choice_as_grammar(choice: list[str]) -> str:
    """An EBNF whose root is exactly one of the strings. JSON string escaping is also
    xgrammar's EBNF string escaping (quotes, backslashes, control characters)."""
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choice)


def grammar_spec(params: StructuredOutputsParams, config: StructuredOutputsConfig) -> GrammarSpec:
    """Normalise a request's params (dict schemas to canonical JSON text, choices to EBNF) so
    that equal constraints share one compiled grammar."""
    any_ws = not (params.disable_any_whitespace or config.disable_any_whitespace)
    kind = params.kind
    if kind == "json":
        schema = params.json if isinstance(params.json, dict) else json.loads(params.json)
        return GrammarSpec("json", json.dumps(schema, sort_keys=True), any_ws)
    if kind == "json_object":
        return GrammarSpec("json", JSON_OBJECT_SCHEMA, any_ws)
    if kind == "choice":
        return GrammarSpec("grammar", choice_as_grammar(params.choice))
    return GrammarSpec(kind, getattr(params, kind))
