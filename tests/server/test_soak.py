"""Soak: many requests with random parameters from concurrent clients, a third of which hang up
mid-stream. Afterwards nothing is left in the engine, KV usage is 0, memory growth is bounded,
and every completed response was well-formed. Prints latency percentiles and throughput.

CI size: SOAK_REQUESTS requests from SOAK_CLIENTS clients; PAGEDSERVE_FULL_SOAK=1 runs the
full size (2,000 requests, 32 clients).
"""
import asyncio
import json
import os
import random
import statistics
import time

import httpx
import pytest

FULL = os.environ.get("PAGEDSERVE_FULL_SOAK") == "1"
SOAK_REQUESTS, SOAK_CLIENTS = (2000, 32) if FULL else (200, 16)
RSS_GROWTH_BOUND_MIB = 256  # generous: a leak of per-request state over 2,000 requests shows
WORDS = "Once upon a time there was a little girl named Lily who liked to play in the park".split()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise LookupError("VmRSS")


def random_request(rng: random.Random, stream: bool) -> tuple[str, dict]:
    body = {"max_tokens": rng.randint(1, 48), "temperature": rng.choice([0, 0.7, 1.0, 1.3]),
            "top_p": rng.choice([1.0, 0.9]), "top_k": rng.choice([0, 5, 50]),
            "n": rng.choice([1, 1, 1, 2, 3]), "seed": rng.choice([None, rng.randint(0, 99)]),
            "stream": stream, "ignore_eos": rng.random() < 0.3}
    if rng.random() < 0.3:
        body["stop"] = rng.sample(WORDS, 2)
    if stream:
        body["stream_options"] = {"include_usage": True}
    text = " ".join(rng.sample(WORDS, rng.randint(1, 10)))
    if rng.random() < 0.5:
        body["prompt"] = text
        if rng.random() < 0.3:
            body["logprobs"] = rng.randint(0, 3)
        return "/v1/completions", body
    body["messages"] = [{"role": "user", "content": text}]
    if rng.random() < 0.3:
        body["logprobs"], body["top_logprobs"] = True, rng.randint(0, 3)
    return "/v1/chat/completions", body


def check_final(path: str, body: dict, data: dict) -> int:
    """Asserts a non-streamed response is well-formed; returns its completion tokens."""
    choices, usage = data["choices"], data["usage"]
    assert sorted(c["index"] for c in choices) == list(range(body["n"]))
    assert all(c["finish_reason"] in ("stop", "length") for c in choices)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= body["n"] * body["max_tokens"]
    if path == "/v1/chat/completions":
        assert all(c["message"]["role"] == "assistant" for c in choices)
    return usage["completion_tokens"]


def check_stream(body: dict, events: list) -> int:
    """Asserts a whole stream is well-formed; returns its completion tokens."""
    assert events[-1] == "[DONE]" and "error" not in json.dumps(events[:-1])
    chunks = events[:-1]
    finished = {c["index"] for e in chunks for c in e["choices"] if c.get("finish_reason")}
    assert finished == set(range(body["n"]))
    usage = chunks[-1]["usage"]
    assert 0 < usage["completion_tokens"] <= body["n"] * body["max_tokens"]
    return usage["completion_tokens"]


class Soak:
    def __init__(self, url: str, requests: int, seed: int = 0) -> None:
        self.url, self.rng, self.requests = url, random.Random(seed), requests
        self.latencies: list[float] = []
        self.tokens = self.dropped = 0

    async def client(self, http: httpx.AsyncClient, drops: bool, share: int) -> None:
        for _ in range(share):
            stream = drops or self.rng.random() < 0.5
            path, body = random_request(self.rng, stream)
            start = time.monotonic()
            if not stream:
                r = await http.post(path, json=body)
                assert r.status_code == 200, r.text
                self.tokens += check_final(path, body, r.json())
            elif await self.stream(http, path, body, self.rng.randint(1, 3) if drops else None):
                continue
            self.latencies.append(time.monotonic() - start)

    async def stream(self, http, path: str, body: dict, drop_after: int | None) -> bool:
        """Streams one request; True if it hung up after drop_after events."""
        events: list = []
        async with http.stream("POST", path, json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    data = line[len("data: "):]
                    events.append(data if data == "[DONE]" else json.loads(data))
                    if drop_after is not None and len(events) >= drop_after and data != "[DONE]":
                        self.dropped += 1
                        return True  # leaving the block closes the connection mid-stream
        self.tokens += check_stream(body, events)
        return False

    async def run(self) -> float:
        start = time.monotonic()
        async with httpx.AsyncClient(base_url=self.url, timeout=300,
                                     limits=httpx.Limits(max_connections=SOAK_CLIENTS)) as http:
            shares = [self.requests // SOAK_CLIENTS + (i < self.requests % SOAK_CLIENTS)
                      for i in range(SOAK_CLIENTS)]  # every client sends its share
            await asyncio.gather(*[self.client(http, i % 3 == 0, shares[i])
                                   for i in range(SOAK_CLIENTS)])
        return time.monotonic() - start


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the server's RSS from /proc")
@pytest.mark.timeout(3600 if FULL else 300)
def test_soak(start_server, template_file):
    srv = start_server(["--max-num-seqs", "64", "--chat-template", template_file])
    try:
        # first allocations (buffers, tokenizer caches) settle before RSS is measured
        asyncio.run(Soak(srv.url, 2 * SOAK_CLIENTS, seed=1).run())
        rss_before = rss_mib(srv.proc.pid)
        soak = Soak(srv.url, SOAK_REQUESTS)
        seconds = asyncio.run(soak.run())
        assert srv.wait_metric("pagedserve:kv_cache_usage_perc", lambda v: v == 0) == 0
        assert srv.metric("pagedserve:num_requests_running") == 0
        assert srv.metric("pagedserve:num_requests_waiting") == 0
        growth = rss_mib(srv.proc.pid) - rss_before
        assert growth < RSS_GROWTH_BOUND_MIB
        assert soak.dropped > 0 and len(soak.latencies) + soak.dropped == SOAK_REQUESTS
        ok = srv.client().completions.create(model="stories260K", prompt="Once upon a time",
                                             max_tokens=8, temperature=0)
        assert "little girl" in ok.choices[0].text
    finally:
        srv.terminate()
    lat = soak.latencies
    print(f"\nsoak: {SOAK_REQUESTS} requests, {SOAK_CLIENTS} clients, {soak.dropped} dropped "
          f"mid-stream, {seconds:.1f} s: {len(lat) / seconds:.1f} completed req/s, "
          f"{soak.tokens / seconds:.0f} completion tok/s; latency p50 "
          f"{percentile(lat, 50):.2f} s p99 {percentile(lat, 99):.2f} s; RSS {rss_before:.0f} "
          f"MiB -> +{growth:.1f} MiB")
