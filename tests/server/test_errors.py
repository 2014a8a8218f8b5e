"""Bad input gets OpenAI's error shape with the right status and the field named."""
import httpx
import openai
import pytest


def post(server, path: str, **kwargs) -> httpx.Response:
    return server.http.post(path, **kwargs)


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    return error["message"]


def test_malformed_json(server):
    r = post(server, "/v1/completions", content=b'{"prompt": "hi", ',
             headers={"content-type": "application/json"})
    assert "JSON" in assert_error(r, 400)


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "hi", "stream": {"yes": 1}}, "stream"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "n": 0}, "n"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "presence_penalty": 5}, "presence_penalty"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
    ({"prompt": "hi", "seed": 2**70}, "seed"),
])
def test_bad_completion_fields_name_the_field(server, body, param):
    assert_error(post(server, "/v1/completions", json=body), 400, param)


def test_bad_chat_fields(server):
    # any role the template accepts is fine (as in vLLM); a message needs one
    r = post(server, "/v1/chat/completions", json={"messages": [{"content": "x"}]})
    assert_error(r, 400, "messages.0.role")
    assert_error(post(server, "/v1/chat/completions", json={"messages": []}), 400, "messages")
    assert_error(post(server, "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 50}),
        400, "top_logprobs")


def test_unknown_model_is_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client().completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert "gpt-4" in e.value.message and e.value.code == "model_not_found"
    assert_error(post(server, "/v1/chat/completions", json={
        "model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}), 404, "model")


def test_too_long_names_both_numbers(server):
    ids = [5] * 500
    msg = assert_error(post(server, "/v1/completions", json={"prompt": ids, "max_tokens": 20}),
                       400, "max_tokens")
    assert "512" in msg and "520" in msg and "500" in msg and "20" in msg
    with pytest.raises(openai.BadRequestError, match="512"):
        server.client().completions.create(model="stories260K", prompt=[5] * 600, max_tokens=1)


def test_unknown_route_and_method(server):
    assert_error(server.http.get("/v1/nothing"), 404)
    assert_error(server.http.get("/v1/completions"), 405)
