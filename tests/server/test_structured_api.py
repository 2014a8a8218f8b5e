"""Structured outputs, tool calls and their errors through the HTTP API with the openai client,
on the bundled model: every constrained answer validates, streamed or not."""
import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pydantic
import pytest

TOOLS_TEMPLATE = (
    "{% if tools %}tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m.tool_calls %} calls: {{ m.tool_calls | tojson }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}")


class Story(pydantic.BaseModel):
    hero: str = pydantic.Field(pattern=r"^[A-Z][a-z]{2,8}$")
    age: int = pydantic.Field(ge=1, le=99)
    pet: str = pydantic.Field(pattern=r"^(cat|dog|bird)$")


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{2,9}$"},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}, "required": ["tz"]}}}
MSGS = [{"role": "user", "content": "Once upon a time"}]


@pytest.fixture(scope="module")
def srv(start_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("tools") / "tools.jinja"
    path.write_text(TOOLS_TEMPLATE)
    s = start_server(["--chat-template", str(path), "--max-num-seqs", "32",
                      "--structured-outputs-config.disable_any_whitespace", "true",
                      "--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    yield s
    s.terminate()


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


def test_parse_with_a_pydantic_model(client):
    out = client.chat.completions.parse(model="stories260K", messages=MSGS, max_tokens=80,
                                        response_format=Story, temperature=0.9, seed=3, n=2)
    for choice in out.choices:
        assert isinstance(choice.message.parsed, Story) and choice.finish_reason == "stop"


def test_completions_json_object_regex_choice(client):
    obj = client.completions.create(model="stories260K", prompt="Once upon a time",
                                    max_tokens=100, temperature=0, extra_body={
                                        "response_format": {"type": "json_object"},
                                        "ignore_eos": False})
    text = obj.choices[0].text
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")
    regex = r"(Tom|Lily) had [0-9]{1,2} (cats|dogs)"
    out = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=40,
                                    extra_body={"structured_outputs": {"regex": regex}})
    assert re.fullmatch(regex, out.choices[0].text)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="stories260K", prompt="The dog", max_tokens=20, stream=True,
        extra_body={"structured_outputs": {"choice": ["happy", "sad"]}}))
    assert streamed in ("happy", "sad")


def test_sixteen_concurrent_mixed_requests(client):
    schema = Story.model_json_schema()

    def one(i: int):
        kind = i % 3
        extra = [{"response_format": {"type": "json_schema", "json_schema": {
                     "name": "story", "schema": schema}}},
                 {"structured_outputs": {"choice": ["yes", "no"]}}, {}][kind]
        out = client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=60,
                                             temperature=1.0, seed=i, extra_body=extra)
        return kind, out.choices[0]
    with ThreadPoolExecutor(16) as pool:
        for kind, choice in pool.map(one, range(16)):
            if kind == 0:
                Story.model_validate_json(choice.message.content)
            elif kind == 1:
                assert choice.message.content in ("yes", "no")
            else:
                assert choice.finish_reason == "length"


@pytest.mark.parametrize("extra, param, needle", [
    ({"guided_json": {"type": "object"}}, "guided_json", "structured_outputs"),
    ({"structured_outputs": {"regex": "(unclosed"}}, None, "regex"),
    ({"structured_outputs": {"json": {"type": "nope"}}}, None, "json"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format", "schema"),
])
def test_bad_constraints_are_400(client, extra, param, needle):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=5,
                                       extra_body=extra)
    err = e.value.body
    assert needle in err["message"] and (param is None or err["param"] == param)


def test_tool_choice_required_and_named(client):
    out = client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=120,
                                         tools=[WEATHER, TIME], tool_choice="required",
                                         parallel_tool_calls=False, temperature=0.8, seed=1)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    params = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]["function"]
    jsonschema.validate(json.loads(call.function.arguments), params["parameters"])
    named = client.chat.completions.create(
        model="stories260K", messages=MSGS, max_tokens=120, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].finish_reason == "stop"
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # the follow-up turn: the assistant's call and the tool's answer are accepted
    follow = MSGS + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    again = client.chat.completions.create(model="stories260K", messages=follow, max_tokens=5)
    assert again.choices[0].message.content


def test_streamed_tool_calls_reassemble(client):
    calls: dict[int, dict] = {}
    finish = None
    for chunk in client.chat.completions.create(
            model="stories260K", messages=MSGS, max_tokens=120, tools=[WEATHER, TIME],
            tool_choice="required", parallel_tool_calls=False, temperature=0.8, seed=2,
            stream=True):
        for d in chunk.choices[0].delta.tool_calls or []:
            if d.index not in calls:
                assert d.id and d.function.name
                calls[d.index] = {"name": d.function.name, "arguments": ""}
            else:
                assert d.id is None
            calls[d.index]["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls
    for call in calls.values():
        params = {"get_weather": WEATHER, "get_time": TIME}[call["name"]]["function"]
        jsonschema.validate(json.loads(call["arguments"]), params["parameters"])


def test_auto_without_text_calls_is_plain_content(client):
    out = client.chat.completions.create(model="stories260K", messages=MSGS, max_tokens=10,
                                         tools=[WEATHER], temperature=0)
    assert out.choices[0].message.tool_calls in (None, [])
    assert out.choices[0].message.content and out.choices[0].finish_reason == "length"


def test_auto_needs_the_flags(server):
    """The shared server runs without --enable-auto-tool-choice: tools alone mean auto."""
    r = server.http.post("/v1/chat/completions", json={
        "model": "stories260K", "messages": MSGS, "tools": [WEATHER], "max_tokens": 5})
    assert r.status_code == 400
    err = r.json()["error"]
    assert "--enable-auto-tool-choice" in err["message"] and err["param"] == "tool_choice"
    r = server.http.post("/v1/chat/completions", json={
        "model": "stories260K", "messages": MSGS, "tools": [WEATHER], "tool_choice": "none",
        "max_tokens": 5})
    assert r.status_code == 200 and not r.json()["choices"][0]["message"]["tool_calls"]


THINK_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "assistant:<think>{% if not thinking %}</think>{% endif %}")


@pytest.fixture(scope="module")
def thinking_srv(start_server, tmp_path_factory):
    """A tiny random Qwen3 whose tokenizer has the think tokens, with --reasoning-parser."""
    from transformers import AutoTokenizer

    from tests.conftest import build_tiny_model
    root = tmp_path_factory.mktemp("think")
    model = build_tiny_model(str(root / "model"), "qwen3", vocab_size=520)
    tok = AutoTokenizer.from_pretrained(model)
    tok.add_tokens(["<think>", "</think>"])
    tok.save_pretrained(model)
    (root / "t.jinja").write_text(THINK_TEMPLATE)
    s = start_server([model, "--chat-template", str(root / "t.jinja"),
                      "--reasoning-parser", "deepseek_r1"])
    yield s
    s.terminate()


def test_reasoning_split_whole_and_streamed(thinking_srv):
    client = openai.OpenAI(base_url=thinking_srv.url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model=thinking_srv_name(thinking_srv), messages=MSGS, max_tokens=12, temperature=0,
              extra_body={"chat_template_kwargs": {"thinking": True}})
    whole = client.chat.completions.create(**kw).choices[0].message
    thinking = whole.model_extra["reasoning_content"]
    assert thinking and "</think>" not in thinking
    streamed, content = "", ""
    for chunk in client.chat.completions.create(**kw, stream=True):
        delta = chunk.choices[0].delta
        streamed += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
    assert streamed == thinking and content == (whole.content or "")
    # thinking closed by the template: the constraint applies to the answer from the start
    answer = client.chat.completions.create(**{**kw, "extra_body": {
        "chat_template_kwargs": {"thinking": False},
        "structured_outputs": {"choice": ["yes", "no"]}}}).choices[0].message
    assert answer.content in ("yes", "no") and answer.model_extra["reasoning_content"] is None


def thinking_srv_name(srv) -> str:
    return srv.http.get("/v1/models").json()["data"][0]["id"]
