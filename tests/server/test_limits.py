"""Bounds a public endpoint needs (each a `pagedserve serve` flag), the API key against
malformed headers, and no prompt or completion text in the log at the default level."""
import socket

import httpx
import pytest

LIMIT_ARGS = ["--max-request-body-bytes", "4000", "--max-n", "3", "--max-logprobs", "2",
              "--max-stop-strings", "2", "--max-stop-length", "5",
              "--uvicorn-log-level", "info"]  # the default level, which must not show text
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def limited(start_server, template_file):
    srv = start_server([*LIMIT_ARGS, "--chat-template", template_file])
    yield srv
    srv.terminate()


def assert_limit(r: httpx.Response, param: str | None, flag: str, status: int = 400) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and flag in error["message"], error


@pytest.mark.parametrize("body, param, flag", [
    ({"n": 4}, "n", "--max-n"),
    ({"prompt": ["a", "b"], "n": 2}, "n", "--max-n"),  # 2 prompts x 2 = 4 sequences
    ({"logprobs": 3}, "logprobs", "--max-logprobs"),
    ({"stop": ["a", "b", "c"]}, "stop", "--max-stop-strings"),
    ({"stop": "longer"}, "stop", "--max-stop-length"),
    ({"stop_token_ids": [1, 2, 3]}, "stop_token_ids", "--max-stop-strings"),
])
def test_completion_limits_name_the_flag(limited, body, param, flag):
    assert_limit(limited.http.post("/v1/completions", json={"prompt": "Hi", **body}), param, flag)


def test_limits_allow_up_to_the_bound(limited):
    r = limited.http.post("/v1/completions", json={
        "prompt": ["a", "b", "c"], "max_tokens": 2, "logprobs": 2, "stop": ["ab", "cdefg"],
        "stop_token_ids": [7, 8]})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 3
    r = limited.http.post("/v1/chat/completions", json={
        "messages": MESSAGES, "max_tokens": 2, "n": 3, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text


def test_chat_limits(limited):
    post = limited.http.post
    assert_limit(post("/v1/chat/completions", json={"messages": MESSAGES, "n": 9}), "n", "--max-n")
    assert_limit(post("/v1/chat/completions", json={
        "messages": MESSAGES, "logprobs": True, "top_logprobs": 3}), "top_logprobs",
        "--max-logprobs")
    ok = post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1,
                                            "top_logprobs": 3})  # ignored without logprobs
    assert ok.status_code == 200


def test_body_size_is_413_naming_the_limit(limited):
    big = {"prompt": "x" * 5000}
    for path in ("/v1/completions", "/tokenize"):
        r = limited.http.post(path, json=big)
        assert_limit(r, None, "--max-request-body-bytes", 413)
        assert "4000" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: the server counts what arrives
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'
    r = limited.http.post("/v1/completions", content=chunked(),
                          headers={"content-type": "application/json"})
    assert_limit(r, None, "--max-request-body-bytes", 413)
    assert limited.http.post("/tokenize", json={"prompt": "x" * 3000}).status_code == 200


def test_prompt_and_max_tokens_bounded_by_model_len(limited):
    r = limited.http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 10**12})
    assert_limit(r, "max_tokens", "maximum context length")
    r = limited.http.post("/v1/completions", json={"prompt": [5] * 512, "max_tokens": None})
    assert_limit(r, "prompt", "maximum context length")


def test_no_prompt_or_completion_text_in_default_log(limited):
    secret = "Zanzibar quokka marmalade"
    r = limited.http.post("/v1/completions", json={"prompt": secret, "max_tokens": 24,
                                                   "temperature": 0})
    chat = limited.http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": secret + " chat"}], "max_tokens": 24})
    stream = limited.http.post("/v1/completions", json={"prompt": secret, "max_tokens": 24,
                                                        "stream": True})
    bad = limited.http.post("/v1/completions", json={"prompt": secret, "temperature": -1})
    assert r.status_code == chat.status_code == stream.status_code == 200
    assert bad.status_code == 400
    texts = [r.json()["choices"][0]["text"], chat.json()["choices"][0]["message"]["content"]]
    log = limited.output()
    assert "POST /v1/completions" in log  # the access log is on, at the default level
    assert "Zanzibar" not in log and "quokka" not in log
    for text in texts:
        assert len(text) > 10 and text not in log


def raw_status(port: int, header_line: bytes) -> int:
    """Status of a POST whose Authorization header is exactly these bytes (not ASCII maybe)."""
    body = b'{"prompt": "Hi", "max_tokens": 1}'
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                      b"application/json\r\n" + header_line + b"Content-Length: %d\r\n"
                      b"Connection: close\r\n\r\n" % len(body) + body)
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # the parser gave up on the request and closed the connection
    return int(data.split(b" ", 2)[1]) if data else 0


@pytest.mark.parametrize("header", [
    b"", b"Authorization: \r\n", b"Authorization: Bearer\r\n", b"Authorization: Bearer \r\n",
    b"Authorization: Basic c2stdGVzdA==\r\n", b"Authorization: Bearer sk-test-4f1c9\r\n",
    b"Authorization: Bearer sk-test-4f1c9a \xff\xfe\r\n",
    b"Authorization: \xc3\xa9\xe2\x82\xac\r\n",
    b"Authorization: Bearer " + b"k" * 8000 + b"\r\n",
    b"Authorization: Bearer x\r\nAuthorization: Bearer sk-test-4f1c9a\r\n",
])
def test_malformed_api_key_headers_are_401(server, header):
    assert raw_status(server.port, header) == 401


def test_unparseable_headers_are_refused_not_500(server):
    """The HTTP parser refuses these before the app sees them (a 4xx or a closed connection)."""
    for header in (b"Authorization: Bearer " + b"k" * 200_000 + b"\r\n",
                   b"Authorization: Bearer sk-test-4f1c9a\x00\r\n"):
        status = raw_status(server.port, header)
        assert status == 0 or 400 <= status < 500
    ok = b"Authorization: Bearer %s\r\n" % server.api_key.encode()
    assert raw_status(server.port, ok) == 200
