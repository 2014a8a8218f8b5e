"""The API key, chat completions through --chat-template, and the queue bound."""
import asyncio

import httpx
import openai
import pytest

MESSAGES = [{"role": "system", "content": "You tell stories."},
            {"role": "user", "content": [{"type": "text", "text": "Once upon a time"}]}]


def test_api_key_guards_v1_only(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.api_key}):
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi"}, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert server.api_key not in server.output()


def test_chat_completion(server):
    client = server.client()
    r = client.chat.completions.create(model="alias", messages=MESSAGES, max_completion_tokens=12,
                                       temperature=0, logprobs=True, top_logprobs=2)
    assert r.object == "chat.completion" and r.model == "stories260K"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    prompt = server.http.post("/tokenize", json={"messages": MESSAGES}).json()["count"]
    assert r.usage.prompt_tokens == prompt and 0 < r.usage.completion_tokens <= 12
    entries = choice.logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)
    assert all(e.top_logprobs[0].logprob == pytest.approx(e.logprob) for e in entries)  # greedy

    stream = list(client.chat.completions.create(
        model="stories260K", messages=MESSAGES, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert stream[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == choice.finish_reason
    assert stream[-1].usage.completion_tokens == r.usage.completion_tokens


def test_chat_n_and_too_long(server):
    r = server.client().chat.completions.create(model="stories260K", messages=MESSAGES,
                                                max_tokens=4, n=2, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1]
    with pytest.raises(openai.BadRequestError, match="512") as e:
        server.client().chat.completions.create(model="stories260K", messages=MESSAGES,
                                                max_tokens=600)
    assert "600" in e.value.message


def test_chat_rejects_non_text_parts(server):
    with pytest.raises(openai.BadRequestError, match="only text"):
        server.client().chat.completions.create(model="stories260K", messages=[
            {"role": "user", "content": [{"type": "image_url",
                                          "image_url": {"url": "http://x/y.png"}}]}])


def test_queue_full_is_503_with_retry_after(server):
    n = server.max_queue_len

    async def main():
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                     timeout=60) as client:
            with server.paused():  # nothing gets scheduled: the requests queue up
                tasks = [asyncio.create_task(client.post("/v1/completions", json={
                    "prompt": "Hello", "max_tokens": 3})) for _ in range(n)]
                for _ in range(600):
                    if server.metric("pagedserve:num_requests_waiting") >= n:
                        break
                    await asyncio.sleep(0.05)
                over = await client.post("/v1/completions", json={"prompt": "Hi"})
            return over, await asyncio.gather(*tasks)
    over, queued = asyncio.run(main())
    assert over.status_code == 503 and int(over.headers["retry-after"]) > 0
    assert over.json()["error"]["code"] == "queue_full"
    assert [r.status_code for r in queued] == [200] * n  # the queue drains normally
