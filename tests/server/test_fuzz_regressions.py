"""Inputs that fuzzing and hostile probing found to break the server, kept as regressions."""
import httpx
import pytest


def post_raw(server, path: str, body: str) -> httpx.Response:
    """JSON text as is (lone surrogate escapes, huge integers) without client-side checks."""
    return server.http.post(path, content=body.encode(),
                            headers={"content-type": "application/json"})


def test_huge_top_k_does_not_kill_the_engine(server):
    # found: top_k >= 2**63 overflowed int64 inside the sampler and the engine loop died,
    # failing every request on the server
    for top_k in ("100000000000000000000000", "9223372036854775807", "1000000000"):
        r = post_raw(server, "/v1/completions",
                     '{"prompt": "Once upon a time", "max_tokens": 3, "top_k": ' + top_k + "}")
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", '{"prompt": "a\\ud800b", "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"prompt": ["ok", "\\udfff"], "max_tokens": 2}', "prompt"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}, {"role": '
     '"user", "content": [{"type": "text", "text": "\\ud83d"}]}]}', "messages.1.content"),
    ("/tokenize", '{"prompt": "\\ud800"}', "prompt"),
    ("/tokenize", '{"messages": [{"role": "user", "content": "\\ud800"}]}',
     "messages.0.content"),
])
def test_lone_surrogates_are_400_not_500(server, path, body, param):
    # found: JSON allows "\ud800", the tokenizer raised TypeError and the server answered 500
    r = post_raw(server, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert "Unicode" in r.json()["error"]["message"]


def test_surrogate_pair_is_fine(server):
    r = post_raw(server, "/tokenize", '{"prompt": "\\ud83d\\ude00"}')  # one emoji, escaped
    assert r.status_code == 200 and r.json()["count"] > 0


@pytest.mark.parametrize("body, param", [
    ({"prompt": "Hi", "max_tokens": True}, "max_tokens"),
    ({"prompt": "Hi", "stop_token_ids": [True]}, "stop_token_ids.0"),
    ({"prompt": [True, False]}, "prompt"),
    ({"prompt": "Hi", "temperature": False}, "temperature"),
    ({"prompt": "Hi", "n": "2"}, "n"),
    ({"prompt": "Hi", "echo": 1}, "echo"),
])
def test_no_type_coercion(server, body, param):
    # found by schemathesis (negative cases): booleans passed as integers (true -> 1)
    r = server.http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_ints_are_numbers(server):
    r = server.http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2,
                                                  "temperature": 0, "top_p": 1})
    assert r.status_code == 200, r.text
