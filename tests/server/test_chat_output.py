"""A chat choice's text to message / stream deltas: reasoning split, tool calls by mode, the
finish_reason per mode; and the request fields that set a constraint (400s naming them)."""
import json
import random

import pytest
from transformers import AutoTokenizer

from pagedserve.server.chat_output import ChatOutputParser, check_tool_choice, tool_mode
from pagedserve.server.errors import APIError
from pagedserve.server.reasoning import get_reasoning_parser
from pagedserve.server.structured_outputs import request_constraint
from tests.conftest import STORIES

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
QWEN3 = ('<think>\nThe user asks for the weather; call the tool.\n</think>\n\n'
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


@pytest.fixture(scope="module")
def think_tok(tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(STORIES)
    tok.add_tokens(["<think>", "</think>"])
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def run_stream(make, text: str, finish: str, seed: int) -> tuple[dict, str]:
    """Stream text in seeded random pieces; the message a client reassembles, and finish."""
    parser, rng = make(), random.Random(seed)
    msg, calls, so_far, i = {"content": "", "reasoning_content": ""}, {}, "", 0
    deltas = []
    while i < len(text):
        n = rng.randint(1, 5)
        so_far, i = so_far + text[i:i + n], i + n
        deltas.append(parser.delta(so_far))
    last, reason = parser.finish(text, finish)
    for d in deltas + [last]:
        if d is None:
            continue
        d = d.to_dict()
        msg["content"] += d.get("content", "")
        msg["reasoning_content"] += d.get("reasoning_content", "")
        for tc in d.get("tool_calls", []):
            entry = calls.setdefault(tc["index"], {"id": tc.get("id"), "type": "function",
                                                   "function": {"name": tc["function"].get("name"),
                                                                "arguments": ""}})
            entry["function"]["arguments"] += tc["function"]["arguments"]
    return {"content": msg["content"] or None,
            "reasoning_content": msg["reasoning_content"] or None,
            "tool_calls": [calls[k] for k in sorted(calls)]}, reason


def same(whole: dict, streamed: dict) -> bool:
    def strip(m: dict) -> dict:  # ids are random: compare the rest
        return {**m, "tool_calls": [{**c, "id": None} for c in m["tool_calls"]]}
    w = {k: strip(whole)[k] for k in ("content", "tool_calls")}
    s = {k: strip(streamed)[k] for k in ("content", "tool_calls")}
    w["content"] = (w["content"] or "").strip() or None
    s["content"] = (s["content"] or "").strip() or None
    return w == s and whole.get("reasoning_content") == streamed["reasoning_content"]


SCENARIOS = [
    # (mode, tool_choice, reasoning, text, finish in, message content, n calls, finish out)
    ("auto", "auto", "qwen3", QWEN3, "stop", None, 1, "tool_calls"),
    ("auto", None, None, "It is sunny in Paris.", "stop", "It is sunny in Paris.", 0, "stop"),
    ("none", "none", None, QWEN3.split("\n\n")[1], "stop", QWEN3.split("\n\n")[1], 0, "stop"),
    ("required", "required", None, '[{"name": "get_weather", "parameters": {"city": "Oslo"}}]',
     "stop", None, 1, "tool_calls"),
    ("required", "required", None, '[{"name": "get_weather", "parameters": {"ci', "length",
     '[{"name": "get_weather", "parameters": {"ci', 0, "length"),
    ("named", {"type": "function", "function": {"name": "get_weather"}}, "deepseek_r1",
     'Need Rome.</think>{"city": "Rome"}', "stop", None, 1, "stop"),
    ("auto", "auto", "deepseek_r1", "Thinking, cut short", "length", None, 0, "length"),
]


@pytest.mark.parametrize("mode, choice, reasoning, text, fin, content, ncalls, fout", SCENARIOS)
def test_whole_and_stream(think_tok, mode, choice, reasoning, text, fin, content, ncalls, fout):
    def make():
        r = get_reasoning_parser(reasoning)(think_tok) if reasoning else None
        return ChatOutputParser(tool_mode(TOOLS, choice), choice, "hermes", r)
    assert tool_mode(TOOLS, choice) == mode
    message, reason = make().whole(text, fin)
    assert (message["content"], len(message["tool_calls"]), reason) == (content, ncalls, fout)
    for call in message["tool_calls"]:
        assert call["function"]["name"] == "get_weather"
        assert set(json.loads(call["function"]["arguments"])) == {"city"}
    assert ("reasoning_content" in message) == bool(reasoning)
    for seed in range(3):
        streamed, s_reason = run_stream(make, text, fin, seed)
        assert s_reason == fout
        if fin == "length" and streamed["tool_calls"]:
            # a call cut by max_tokens: what streamed is visibly incomplete, and ends "length"
            for call in streamed["tool_calls"]:
                with pytest.raises(ValueError):
                    json.loads(call["function"]["arguments"])
            continue
        assert same(message, streamed)


def test_auto_needs_both_flags():
    with pytest.raises(ValueError, match="--enable-auto-tool-choice and --tool-call-parser"):
        check_tool_choice("auto", None, False)
    with pytest.raises(ValueError, match="--enable-auto-tool-choice"):
        check_tool_choice("auto", "hermes", False)
    check_tool_choice("auto", "hermes", True)
    check_tool_choice("required", None, False)  # constrained: no parser needed


def constraint(**body):
    return request_constraint(body)


def test_constraint_fields():
    assert constraint() is None and constraint(response_format={"type": "text"}) is None
    assert constraint(response_format={"type": "json_object"}).json_object
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"name": "x", "schema": schema, "strict": True}
    got = constraint(response_format={"type": "json_schema", "json_schema": spec})
    assert got.json == schema
    assert constraint(structured_outputs={"regex": "a+"}).regex == "a+"
    named = constraint(tools=TOOLS, tool_choice={"type": "function",
                                                 "function": {"name": "get_weather"}})
    assert json.loads(named.json) == TOOLS[0]["function"]["parameters"]
    assert constraint(tools=TOOLS, tool_choice="auto") is None
    assert json.loads(constraint(tools=TOOLS, tool_choice="required",
                                 parallel_tool_calls=False).json)["maxItems"] == 1


@pytest.mark.parametrize("body, param, needle", [
    ({"guided_json": {"type": "object"}}, "guided_json", '"structured_outputs": {"json"'),
    ({"guided_choice": ["a"]}, "guided_choice", "removed in vLLM 0.12"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"pattern": "a"}}, "structured_outputs", "no field 'pattern'"),
    ({"response_format": {"type": "xml"}}, "response_format", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format", "schema must be"),
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
     "structured_outputs", "give only one"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "not in tools"),
])
def test_bad_constraint_fields_are_400s(body, param, needle):
    with pytest.raises(APIError) as e:
        request_constraint(body)
    assert e.value.status == 400 and e.value.param == param and needle in e.value.message


def test_auto_without_parallel_calls_keeps_the_first():
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
    both, _ = ChatOutputParser("auto", "auto", "hermes").whole(text, "stop")
    one, reason = ChatOutputParser("auto", "auto", "hermes",
                                   parallel_tool_calls=False).whole(text, "stop")
    assert len(both["tool_calls"]) == 2 and len(one["tool_calls"]) == 1
    assert json.loads(one["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert reason == "tool_calls"
    streamed, _ = run_stream(lambda: ChatOutputParser("auto", "auto", "hermes",
                                                      parallel_tool_calls=False),
                             text, "stop", 0)
    assert [c["function"]["arguments"] for c in streamed["tool_calls"]] == \
        [one["tool_calls"][0]["function"]["arguments"]]
