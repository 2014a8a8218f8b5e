"""Tool-call parsers on recorded outputs of each family (tests/server/data): whole outputs
and streams. A stream, however the text is cut into deltas, must reassemble to exactly what
the whole-output parse returns; each call's first delta carries id and name, later ones only
argument fragments."""
import json
import os
import random

import jsonschema
import pydantic
import pytest
import torch
from transformers import AutoTokenizer

from pagedserve.engine.structured_output import StructuredOutputsConfig, StructuredOutputsParams
from pagedserve.engine.structured_output.manager import StructuredOutputManager
from pagedserve.server.tool_parsers import TOOL_PARSERS, get_tool_parser
from pagedserve.server.tool_parsers.tool_choice import (
    NamedToolParser,
    RequiredToolParser,
    named_function_call,
    required_calls,
    tool_choice_schema,
)
from tests.conftest import STORIES

DATA = json.load(open(os.path.join(os.path.dirname(__file__), "data", "tool_call_outputs.json")))
CASES = [(family, case) for family in TOOL_PARSERS for case in DATA[family]]


def chunkings(text: str) -> list[list[str]]:
    """The text whole, one character at a time, and cut at seeded random places."""
    out = [[text], list(text)]
    for seed in range(3):
        rng, cuts = random.Random(seed), [0]
        while cuts[-1] < len(text):
            cuts.append(min(len(text), cuts[-1] + rng.randint(1, 7)))
        out.append([text[a:b] for a, b in zip(cuts, cuts[1:])])
    return out


def stream(parser, pieces: list[str]) -> tuple[str, list[dict]]:
    """Feed deltas; (content, calls as {id, name, arguments}) reassembled as a client does."""
    text, content, calls = "", "", {}
    deltas = []
    for piece in pieces:
        text += piece
        delta = parser.extract_tool_calls_streaming(text)
        if delta is not None:
            deltas.append(delta)
    if (last := parser.finish_streaming(text)) is not None:
        deltas.append(last)
    for delta in deltas:
        content += delta.content or ""
        for tc in delta.tool_calls:
            if tc.index not in calls:
                assert tc.id is not None and tc.name and tc.index == len(calls)
                calls[tc.index] = {"id": tc.id, "name": tc.name, "arguments": tc.arguments}
            else:
                assert tc.id is None and tc.name is None  # id and name come once
                calls[tc.index]["arguments"] += tc.arguments
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("family, case", CASES, ids=[f"{f}-{i}" for f, c in
                         [(f, None) for f in TOOL_PARSERS] for i in range(len(DATA[f]))])
def test_whole_output(family, case):
    got = get_tool_parser(family)().extract_tool_calls(case["text"])
    assert got.tools_called == bool(case["calls"])
    assert [(c.name, json.loads(c.arguments)) for c in got.tool_calls] == \
        [tuple(c) for c in case["calls"]]
    assert got.content == case["content"]
    assert len({c.id for c in got.tool_calls}) == len(got.tool_calls)


@pytest.mark.parametrize("family, case", CASES, ids=[f"{f}-{i}" for f, c in
                         [(f, None) for f in TOOL_PARSERS] for i in range(len(DATA[f]))])
def test_stream_reassembles_to_the_whole_output(family, case):
    whole = get_tool_parser(family)().extract_tool_calls(case["text"])
    for pieces in chunkings(case["text"]):
        content, calls = stream(get_tool_parser(family)(), pieces)
        if case.get("cut"):  # cut by max_tokens: what streamed is visibly not a whole call
            assert content == case["text"].split("<tool_call>")[0]
            assert all(not c["arguments"].endswith("}") for c in calls)
            continue
        assert [(c["name"], c["arguments"]) for c in calls] == \
            [(c.name, c.arguments) for c in whole.tool_calls]
        if whole.tools_called:
            assert content.strip() == (whole.content or "")
        else:
            assert content == case["text"]


def test_mistral_ids_fit_its_chat_template():
    got = get_tool_parser("mistral")().extract_tool_calls(DATA["mistral"][1]["text"])
    assert all(len(c.id) == 9 and c.id.isalnum() for c in got.tool_calls)


def test_arguments_stream_before_the_call_is_complete():
    parser = get_tool_parser("hermes")()
    text = '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2], "b": "x'
    delta = parser.extract_tool_calls_streaming(text)
    assert delta.tool_calls[0].name == "f"
    fragment = "".join(t.arguments for t in delta.tool_calls)
    assert fragment and '{"a": [1, 2], "b": "x}'.startswith(fragment)


def test_unknown_parser_names_the_known_ones():
    with pytest.raises(ValueError, match="hermes, llama3_json, mistral"):
        get_tool_parser("pythonic2")


class Address(pydantic.BaseModel):
    street: str = pydantic.Field(pattern=r"^[A-Z][a-z]{1,6} St$")  # short: random logits end it
    zip_code: str = pydantic.Field(pattern=r"^[0-9]{5}$")


class Order(pydantic.BaseModel):
    item: str = pydantic.Field(pattern=r"^[a-z]{1,8}$")
    quantity: int = pydantic.Field(ge=1, le=9)
    ship_to: Address


TOOLS = [
    {"type": "function", "function": {"name": "place_order",
                                      "parameters": Order.model_json_schema()}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]}}},
    {"type": "function", "function": {"name": "ping"}},
]


def test_tool_choice_schemas_are_valid_json_schemas():
    for choice in ("required", {"type": "function", "function": {"name": "place_order"}}):
        schema = tool_choice_schema(TOOLS, choice, parallel_tool_calls=False)
        jsonschema.Draft202012Validator.check_schema(schema)
    assert tool_choice_schema(TOOLS, "auto") is None and tool_choice_schema(TOOLS, "none") is None
    assert tool_choice_schema(TOOLS, "required", False)["maxItems"] == 1
    assert "maxItems" not in tool_choice_schema(TOOLS, "required", True)
    with pytest.raises(ValueError, match="'nope', which is not in tools"):
        tool_choice_schema(TOOLS, {"type": "function", "function": {"name": "nope"}})


@pytest.fixture(scope="module")
def manager():
    tok = AutoTokenizer.from_pretrained(STORIES)
    return tok, StructuredOutputManager(StructuredOutputsConfig(disable_any_whitespace=True),
                                        tok, 512, frozenset({2}))


def constrained(manager, schema: dict, seed: int) -> str:
    tok, mgr = manager
    so = mgr.grammar_init(StructuredOutputsParams(json=schema), [1])
    so.future.result(timeout=30)
    gen, out = torch.Generator().manual_seed(seed), []
    for _ in range(400):
        logits = torch.randn(1, 512, generator=gen) * 2
        mgr.apply_bitmask(logits, [so])
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        assert mgr.accept_token(so, token)
        if so.grammar.is_terminated():
            return tok.decode(out)
        out.append(token)
    raise AssertionError("constrained output did not finish")


@pytest.mark.parametrize("seed", range(3))
def test_required_output_is_calls_that_validate(manager, seed):
    text = constrained(manager, tool_choice_schema(TOOLS, "required", False), seed)
    calls = required_calls(text)
    assert len(calls) == 1
    params = {t["function"]["name"]: t["function"].get("parameters", {}) for t in TOOLS}
    jsonschema.validate(json.loads(calls[0].arguments), params[calls[0].name])
    content, streamed = stream(RequiredToolParser(), chunkings(text)[2])
    assert content == "" and [(c["name"], c["arguments"]) for c in streamed] == \
        [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("seed", range(2))
def test_named_function_output_validates(manager, seed):
    choice = {"type": "function", "function": {"name": "place_order"}}
    text = constrained(manager, tool_choice_schema(TOOLS, choice), seed)
    call = named_function_call("place_order", text)
    Order.model_validate_json(call.arguments)
    _, streamed = stream(NamedToolParser("place_order"), list(text))
    assert [(c["name"], c["arguments"]) for c in streamed] == [(call.name, call.arguments)]
    assert named_function_call("place_order", text[:-1]) is None  # cut short: no call
