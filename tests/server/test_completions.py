"""/v1/completions, /v1/models and the tokenizer routes, through the official openai client."""
import json

import pytest


def test_readme_curl_example(server):
    # the README's `curl` body, as raw JSON
    body = {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 40,
            "temperature": 0}
    r = server.http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "text_completion" and data["model"] == "stories260K"
    assert data["id"] and isinstance(data["created"], int)
    choice = data["choices"][0]
    assert choice["index"] == 0 and "little girl named Lily" in choice["text"]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert "stop_reason" in choice
    usage = data["usage"]
    assert usage["completion_tokens"] == 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + 40


def test_client_completion_fields(server):
    client = server.client()
    greedy = client.completions.create(model="stories260K", prompt="Once upon a time",
                                       max_tokens=12, temperature=0)
    text = greedy.choices[0].text
    # stop string: cut before it, reported as the stop reason
    stop_word = text.split()[2]
    stopped = client.completions.create(model="stories260K", prompt="Once upon a time",
                                        max_tokens=12, temperature=0, stop=[stop_word])
    c = stopped.choices[0]
    assert c.finish_reason == "stop" and c.model_extra["stop_reason"] == stop_word
    assert stop_word not in c.text and text.startswith(c.text)
    # echo, token-id prompt and a list of prompts
    echoed = client.completions.create(model="stories260K", prompt="Once upon a time",
                                       max_tokens=12, temperature=0, echo=True)
    assert echoed.choices[0].text == "Once upon a time" + text
    ids = server.http.post("/tokenize", json={"prompt": "Once upon a time"}).json()["tokens"]
    by_ids = client.completions.create(model="stories260K", prompt=ids, max_tokens=12,
                                       temperature=0)
    assert by_ids.choices[0].text == text
    many = client.completions.create(model="stories260K", prompt=["Once upon a time", "Tom had"],
                                     max_tokens=5, temperature=0, n=2)
    assert sorted(c.index for c in many.choices) == [0, 1, 2, 3]
    assert many.usage.completion_tokens == 4 * 5
    assert many.usage.prompt_tokens == len(ids) + len(
        server.http.post("/tokenize", json={"prompt": "Tom had"}).json()["tokens"])


def test_sampling_seed_and_logprobs(server):
    client = server.client()
    kw = dict(model="stories260K", prompt="The dog", max_tokens=10, temperature=1.0, seed=7,
              top_p=0.9, extra_body={"top_k": 50, "min_p": 0.01})
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text
    other = client.completions.create(**{**kw, "seed": 8, "n": 3})
    assert len({c.text for c in other.choices} | {a.choices[0].text}) > 1
    lp = client.completions.create(model="stories260K", prompt="The dog", max_tokens=5,
                                   temperature=0, logprobs=3).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(top) == 3 for top in lp.top_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(max(top.values()) == pytest.approx(v) for top, v in
               zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset == sorted(lp.text_offset)


def test_streaming_matches_non_streaming(server):
    client = server.client()
    full = client.completions.create(model="stories260K", prompt="Once upon a time",
                                     max_tokens=30, temperature=0, stop=[" park"])
    chunks = list(client.completions.create(
        model="stories260K", prompt="Once upon a time", max_tokens=30, temperature=0,
        stop=[" park"], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == full.choices[0].finish_reason and set(finals[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_stream_wire_format_ends_with_done(server):
    """What a client relies on: every event is `data: <json>`, the stream ends with
    `data: [DONE]`, and the texts add up to the non-streamed answer (however many tokens
    one event happens to carry)."""
    body = {"prompt": "Once upon a time", "max_tokens": 3, "temperature": 0}
    whole = server.http.post("/v1/completions", json=body).json()["choices"][0]
    with server.http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and len(events) >= 2
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"] == "length"


def test_models_version_tokenize(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["stories260K", "alias"]
    assert models.data[0].model_extra["max_model_len"] == 512
    assert server.http.get("/version").json()["version"]
    tok = server.http.post("/tokenize", json={"prompt": "Hello world"}).json()
    assert tok["count"] == len(tok["tokens"]) and tok["max_model_len"] == 512
    back = server.http.post("/detokenize", json={"tokens": tok["tokens"]}).json()
    assert back["prompt"].endswith("Hello world")
    r = server.http.post("/detokenize", json={"tokens": [99999]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
