"""OpenAI/vLLM API fidelity through HTTP: every field works as vLLM's or is refused with a 400
naming it. Requests go through the official `openai` client where it has the field (so every
response and stream chunk is parsed into its typed models), vLLM's extras through extra_body.
"""
import json

import httpx
import openai
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tok(stories_path):
    return AutoTokenizer.from_pretrained(stories_path)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.client()


def _error(r: httpx.Response, param: str) -> str:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param in error["message"], error
    return error["message"]


def _complete(client, **kwargs):
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in (
        "prompt", "max_tokens", "temperature", "logprobs", "echo", "n", "stream", "seed",
        "stream_options", "logit_bias", "stop")}
    return client.completions.create(model="stories260K", prompt=kwargs.pop("prompt", PROMPT),
                                     extra_body=extra, **kwargs)


# (structured outputs and tools are features now: their tests are the structured-outputs ones)
@pytest.mark.parametrize("path, field, value", [
    ("/v1/completions", "best_of", 2),
    ("/v1/completions", "use_beam_search", True),
    ("/v1/completions", "suffix", "the end"),
    ("/v1/completions", "priority", 1),
    ("/v1/completions", "logits_processors", ["x"]),
    ("/v1/completions", "cache_salt", "s"),
    ("/v1/chat/completions", "audio", {"voice": "x", "format": "wav"}),
    ("/v1/chat/completions", "store", True),
    ("/v1/chat/completions", "chat_template", "{{ messages }}"),
])
def test_refused_fields_are_400_naming_them(server, path, field, value):
    body = {"max_tokens": 2, field: value}
    body.update({"prompt": PROMPT} if "chat" not in path else
                {"messages": [{"role": "user", "content": "Hi"}]})
    _error(server.http.post(path, json=body), field)


@pytest.mark.parametrize("field, value", [("response_format", {"type": "text"}),
                                          ("tool_choice", "none"), ("best_of", 1),
                                          ("priority", 0), ("service_tier", "auto")])
def test_no_op_values_of_refused_fields_are_accepted(server, field, value):
    r = server.http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, field: value})
    assert r.status_code == 200, r.text


def test_unknown_fields_are_ignored_with_one_warning(server):
    r = server.http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2,
                                                  "not_a_field_xyz": 1})
    assert r.status_code == 200, r.text
    assert "ignored: ['not_a_field_xyz']" in server.output()


def test_logit_bias_forces_and_bans_tokens(client, tok):
    forced = tok.convert_tokens_to_ids("▁ha")
    out = _complete(client, max_tokens=6, temperature=0, logit_bias={str(forced): 100},
                    return_token_ids=True)
    assert out.choices[0].token_ids == [forced] * 6
    greedy = _complete(client, max_tokens=1, temperature=0, return_token_ids=True)
    first = greedy.choices[0].token_ids[0]
    banned = _complete(client, max_tokens=1, temperature=0, return_token_ids=True,
                       logit_bias={str(first): -100})
    assert banned.choices[0].token_ids[0] != first
    huge = _complete(client, max_tokens=3, temperature=0, logit_bias={str(forced): 1e9},
                     return_token_ids=True)  # clamped to 100, still a valid request
    assert huge.choices[0].token_ids == [forced] * 3


def test_logit_bias_and_token_ids_are_checked(server):
    post = server.http.post
    for field, value in [("logit_bias", {"99999": 1}), ("logit_bias", {"5": "high"}),
                         ("allowed_token_ids", [99999]), ("stop_token_ids", [99999])]:
        r = post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith(field), r.text


def test_allowed_token_ids_and_bad_words(client, tok):
    allowed = tok.convert_tokens_to_ids(["▁ha", "▁he", "."])
    out = _complete(client, max_tokens=8, temperature=1.0, seed=3, allowed_token_ids=allowed,
                    return_token_ids=True)
    assert set(out.choices[0].token_ids) <= set(allowed)
    text = _complete(client, max_tokens=30, temperature=0).choices[0].text
    assert "Lily" in text
    clean = _complete(client, max_tokens=30, temperature=0, bad_words=["Lily"]).choices[0].text
    assert "Lily" not in clean and clean.split("named")[0] == text.split("named")[0]


def test_logprobs_zero_gives_the_sampled_tokens_logprob(client):
    zero = _complete(client, max_tokens=5, temperature=0, logprobs=0).choices[0].logprobs
    two = _complete(client, max_tokens=5, temperature=0, logprobs=2).choices[0].logprobs
    assert [len(d) for d in zero.top_logprobs] == [1] * 5
    assert zero.tokens == two.tokens
    assert zero.token_logprobs == pytest.approx(two.token_logprobs, abs=1e-5)
    for token, d in zip(two.tokens, two.top_logprobs):
        assert token in d and 2 <= len(d) <= 3


def test_return_token_ids_streamed_and_not(client, server, tok):
    whole = _complete(client, max_tokens=12, temperature=0, return_token_ids=True).choices[0]
    ids = server.http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    assert whole.prompt_token_ids == ids
    assert whole.text == tok.decode(ids + whole.token_ids)[len(tok.decode(ids)):]
    streamed, prompt_ids = [], None
    for chunk in _complete(client, max_tokens=12, temperature=0, return_token_ids=True,
                           stream=True):
        c = chunk.choices[0]
        prompt_ids = prompt_ids or getattr(c, "prompt_token_ids", None)
        streamed += c.token_ids or []
    assert streamed == whole.token_ids and prompt_ids == ids


def test_return_tokens_as_token_ids(client):
    c = _complete(client, max_tokens=4, temperature=0, logprobs=1, return_token_ids=True,
                  return_tokens_as_token_ids=True).choices[0]
    assert c.logprobs.tokens == [f"token_id:{t}" for t in c.token_ids]
    assert all(t in d for t, d in zip(c.logprobs.tokens, c.logprobs.top_logprobs))


@pytest.fixture(scope="module")
def hf_prompt_logprobs(stories_path):
    """transformers' log-likelihood of each prompt token given the ones before it."""
    import torch
    model = AutoModelForCausalLM.from_pretrained(stories_path).eval()

    def run(ids: list[int]) -> list[float]:
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        return [lp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    return run


def test_echo_logprobs_are_the_prompts_log_likelihoods(client, server, hf_prompt_logprobs):
    ids = server.http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    c = _complete(client, max_tokens=3, temperature=0, echo=True, logprobs=1).choices[0]
    lp = c.logprobs
    assert c.text.startswith(PROMPT) and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(hf_prompt_logprobs(ids), abs=1e-4)
    assert len(lp.tokens) == len(ids) + 3


def test_prompt_logprobs_completions_and_chat(client, server, hf_prompt_logprobs):
    ids = server.http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    c = _complete(client, max_tokens=2, prompt_logprobs=2).choices[0]
    plp = c.prompt_logprobs
    assert plp[0] is None and len(plp) == len(ids)
    got = [entry[str(t)]["logprob"] for entry, t in zip(plp[1:], ids[1:])]
    assert got == pytest.approx(hf_prompt_logprobs(ids), abs=1e-4)
    assert all(2 <= len(entry) <= 3 for entry in plp[1:])
    _error(server.http.post("/v1/completions", json={
        "prompt": PROMPT, "max_tokens": 2, "prompt_logprobs": 1, "stream": True}),
        "prompt_logprobs")  # as vLLM refuses them in streams
    msgs = [{"role": "user", "content": "Hi"}]
    chat = server.http.post("/v1/chat/completions", json={
        "messages": msgs, "max_tokens": 2, "prompt_logprobs": 0, "return_token_ids": True}).json()
    chat_ids = chat["prompt_token_ids"]
    assert [e[str(t)]["logprob"] for e, t in zip(chat["prompt_logprobs"][1:], chat_ids[1:])] \
        == pytest.approx(hf_prompt_logprobs(chat_ids), abs=1e-4)


@pytest.mark.parametrize("echo", [False, True])
def test_streamed_text_offset_equals_the_whole_ones(client, echo):
    kw = dict(max_tokens=12, temperature=0, logprobs=1, echo=echo)
    whole = _complete(client, **kw).choices[0]
    offsets, tokens, text = [], [], ""
    for chunk in _complete(client, stream=True, **kw):
        c = chunk.choices[0]
        text += c.text
        offsets += c.logprobs.text_offset
        tokens += c.logprobs.tokens
    assert text == whole.text
    assert offsets == whole.logprobs.text_offset and tokens == whole.logprobs.tokens
    first = len(PROMPT) if echo else 0
    generated = [o for o in offsets if o >= first]
    assert generated == sorted(generated) and max(offsets) < len(text)


def test_continuous_usage_stats(client):
    chunks = list(_complete(client, max_tokens=6, temperature=0, stream=True, stream_options={
        "include_usage": True, "continuous_usage_stats": True}))
    usages = [c.usage for c in chunks]
    assert all(u is not None for u in usages)
    done = [u.completion_tokens for u in usages]
    assert done == sorted(done) and done[-1] == 6
    assert {u.prompt_tokens for u in usages} == {5} and chunks[-1].choices == []


def test_stream_options_need_stream(server):
    _error(server.http.post("/v1/completions", json={
        "prompt": PROMPT, "max_tokens": 2, "stream_options": {"include_usage": True}}),
        "stream_options")


def test_chat_stream_one_role_chunk_per_choice(client):
    stream = client.chat.completions.create(model="stories260K", n=3, max_tokens=3, stream=True,
                                            messages=[{"role": "user", "content": "Hi"}])
    roles = [c for c in stream if c.choices and c.choices[0].delta.role == "assistant"]
    assert sorted(c.choices[0].index for c in roles) == [0, 1, 2]
    assert all(len(c.choices) == 1 for c in roles)


def test_chat_roles_echo_and_continue_final_message(client, server):
    msgs = [{"role": "narrator", "content": "It was late."},
            {"role": "user", "content": "Tell me"}, {"role": "assistant", "content": "Once"}]
    out = client.chat.completions.create(model="stories260K", messages=msgs, max_tokens=4,
                                         temperature=0, extra_body={
                                             "add_generation_prompt": False, "echo": True,
                                             "continue_final_message": True,
                                             "return_token_ids": True})
    assert out.choices[0].message.content.startswith("Once")
    tokens = server.http.post("/tokenize", json={
        "messages": msgs, "add_generation_prompt": False, "continue_final_message": True}).json()
    assert out.prompt_token_ids == tokens["tokens"]
    text = server.http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert "narrator: It was late." in text and text.rstrip().endswith("assistant: Once")
    r = server.http.post("/v1/chat/completions", json={
        "messages": msgs[:2], "continue_final_message": True, "add_generation_prompt": False})
    _error(r, "continue_final_message")
    # no message at all has no final one to continue (found by the /tokenize fuzz test)
    r = server.http.post("/tokenize", json={
        "messages": [], "continue_final_message": True, "add_generation_prompt": False})
    _error(r, "continue_final_message")


def test_tokenize_messages_options(server, tok):
    msgs = [{"role": "user", "content": "Hi"}]
    post = server.http.post
    plain = post("/tokenize", json={"messages": msgs, "add_generation_prompt": False}).json()
    gen = post("/tokenize", json={"messages": msgs, "return_token_strs": True}).json()
    special = post("/tokenize", json={"messages": msgs, "add_special_tokens": True}).json()
    assert gen["tokens"][:len(plain["tokens"])] == plain["tokens"]
    assert len(gen["tokens"]) > len(plain["tokens"])
    assert gen["token_strs"] == tok.convert_ids_to_tokens(gen["tokens"])
    assert special["tokens"] == [tok.bos_token_id] + gen["tokens"]


def test_request_id_header(server):
    r = server.http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2},
                         headers={"X-Request-Id": "trace-42"})
    assert r.json()["id"] == "cmpl-trace-42" and r.headers["x-request-id"] == "trace-42"
    r = server.http.post("/v1/chat/completions", headers={"X-Request-Id": "trace-43"}, json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "stream": True})
    assert r.headers["x-request-id"] == "trace-43" and "chatcmpl-trace-43" in r.text


def test_models_retrieve(client):
    assert client.models.retrieve("alias").id == "alias"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.code == "model_not_found"


def test_text_is_the_full_decode_even_through_bad_bytes(server, tok):
    """Byte tokens pushed up: the model emits runs of bytes that are often not UTF-8. The text
    must still be the tokenizer's decode of the tokens, streamed or not."""
    bias = {str(i): 30 for i in range(3, 259)}  # stories260K's <0x00>..<0xFF>
    body = {"prompt": PROMPT, "max_tokens": 40, "temperature": 1.0, "seed": 11, "n": 4,
            "logit_bias": bias, "return_token_ids": True}
    ids = server.http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    head = tok.decode(ids[-6:])
    whole = server.http.post("/v1/completions", json=body).json()["choices"]
    for c in whole:
        assert c["text"] == tok.decode(ids[-6:] + c["token_ids"])[len(head):]
    assert any("\ufffd" in c["text"] for c in whole), "no invalid bytes: the test tests nothing"
    texts = {}
    with server.http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:])["choices"]:
                    texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    assert [texts[i] for i in range(4)] == [c["text"] for c in whole]
