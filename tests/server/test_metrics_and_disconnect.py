"""/metrics tells the truth, and clients that go away free their KV blocks at once."""
import asyncio
import json
import socket
import threading

import httpx

LONG = {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 400,
        "ignore_eos": True}


def delta(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_move_by_exactly_the_usage(server):
    client = server.client()
    before = server.metrics()
    one = client.completions.create(model="stories260K", prompt="Once upon a time",
                                    max_tokens=7, temperature=0)
    two = client.completions.create(model="stories260K", prompt=["A cat", "The big dog"],
                                    max_tokens=5, n=2, extra_body={"ignore_eos": True})
    chunks = list(client.completions.create(model="stories260K", prompt="Tom", max_tokens=9,
                                            stream=True, stream_options={"include_usage": True}))
    after = server.metrics()
    usages = [one.usage, two.usage, chunks[-1].usage]
    assert delta(before, after, "pagedserve:prompt_tokens_total") == sum(
        u.prompt_tokens for u in usages)
    assert delta(before, after, "pagedserve:generation_tokens_total") == sum(
        u.completion_tokens for u in usages)
    requests = 4  # the two-prompt completion is two engine requests
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
        assert delta(before, after, f"pagedserve:{hist}_count") == requests
    finished = sum(delta(before, after, "pagedserve:request_success_total", finished_reason=r)
                   for r in ("stop", "length"))
    assert finished == requests
    assert after[("pagedserve:generation_tokens_per_second", frozenset())] > 0


def test_prefix_cache_counters(server):
    prompt = "Once upon a time there was a little boy who liked to run in the big green park " * 2
    before = server.metrics()
    for _ in range(2):
        server.client().completions.create(model="stories260K", prompt=prompt, max_tokens=1)
    after = server.metrics()
    queries = delta(before, after, "pagedserve:prefix_cache_queries_total")
    hits = delta(before, after, "pagedserve:prefix_cache_hits_total")
    assert 0 < hits <= queries / 2  # the second request reuses the first one's full blocks


def test_kv_usage_while_running_and_after(server):
    with server.http.stream("POST", "/v1/completions",
                            json={**LONG, "max_tokens": 100, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        with server.paused():  # mid-generation
            assert server.metric("pagedserve:kv_cache_usage_perc") > 0
            assert server.metric("pagedserve:num_requests_running") == 1
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert server.wait_metric("pagedserve:kv_cache_usage_perc", lambda v: v == 0) == 0
    assert server.metric("pagedserve:num_requests_running") == 0


async def _drop_streams(server, n: int) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers,
                                 timeout=60) as client:
        async def one() -> None:
            async with client.stream("POST", "/v1/completions",
                                     json={**LONG, "stream": True}) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        return  # leaving the block closes the connection mid-stream
        await asyncio.gather(*[one() for _ in range(n)])


def _send_raw(server, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
              b"application/json\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n"
              % (server.api_key.encode(), len(data)) + data)
    return s


def test_disconnects_abort_and_free_kv(server):
    aborted = server.metric("pagedserve:request_success_total", finished_reason="abort")
    survivor: dict = {}
    worker = threading.Thread(target=lambda: survivor.update(server.client().completions.create(
        model="stories260K", prompt="The sun", max_tokens=300,
        extra_body={"ignore_eos": True}).usage.model_dump()))
    worker.start()
    asyncio.run(_drop_streams(server, 8))
    # non-streaming clients that hang up while their request runs
    socks = [_send_raw(server, LONG) for _ in range(2)]
    assert server.wait_metric("pagedserve:num_requests_running", lambda v: v >= 2) >= 2
    for s in socks:
        s.close()
    assert server.wait_metric("pagedserve:request_success_total", lambda v: v >= aborted + 10,
                              finished_reason="abort") == aborted + 10
    worker.join(timeout=120)
    assert survivor["completion_tokens"] == 300  # the others were served on
    assert server.wait_metric("pagedserve:kv_cache_usage_perc", lambda v: v == 0) == 0
    assert server.metric("pagedserve:num_requests_running") == 0
    assert server.metric("pagedserve:num_requests_waiting") == 0
    again = server.client().completions.create(model="stories260K", prompt="Hi", max_tokens=3)
    assert again.usage.completion_tokens == 3
