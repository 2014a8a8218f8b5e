"""SIGTERM under load: every request in flight finishes, new ones get 503, exit 0, none dropped.

(Engine death, by an injected step exception or a killed tensor-parallel worker, is covered
in test_lifecycle.py and test_app_inprocess.py.)
"""
import asyncio
import json
import signal
import time

import httpx

IN_FLIGHT, MAX_TOKENS = 16, 40


async def one(http: httpx.AsyncClient, i: int) -> bool:
    """One request of the load; True when it completed in full."""
    body = {"prompt": f"Story {i}:", "max_tokens": MAX_TOKENS, "ignore_eos": True,
            "stream": i % 2 == 0}
    if not body["stream"]:
        r = await http.post("/v1/completions", json=body)
        return r.status_code == 200 and r.json()["usage"]["completion_tokens"] == MAX_TOKENS
    events = []
    async with http.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    chunks = [json.loads(e) for e in events[:-1]]
    return (r.status_code == 200 and events[-1] == "[DONE]" and "error" not in events[-2]
            and chunks[-1]["choices"][0]["finish_reason"] == "length")


def test_sigterm_under_load_drops_nothing(start_server):
    srv = start_server(["--shutdown-timeout", "120"])

    async def main():
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as http:
            with srv.paused():  # the load is in flight, nothing finishes yet
                load = [asyncio.create_task(one(http, i)) for i in range(IN_FLIGHT)]
                deadline = time.monotonic() + 60
                while (srv.metric("pagedserve:num_requests_running")
                       + srv.metric("pagedserve:num_requests_waiting") < IN_FLIGHT
                       and time.monotonic() < deadline):
                    await asyncio.sleep(0.05)
                srv.proc.send_signal(signal.SIGTERM)
                while (await http.get("/health")).status_code != 503:
                    await asyncio.sleep(0.05)
                refused = await http.post("/v1/completions", json={"prompt": "Hi"})
            return refused, await asyncio.gather(*load)
    refused, completed = asyncio.run(main())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    dropped = completed.count(False)
    print(f"\nSIGTERM under load: {IN_FLIGHT} in flight, {completed.count(True)} completed, "
          f"{dropped} dropped")
    assert dropped == 0
    assert srv.wait_exit() == 0
