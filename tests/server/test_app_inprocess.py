"""The app in this process over a real engine (ASGI, no socket): batching, engine death, the
drain timeout, a model without a chat template, and the OpenAPI schema."""
import asyncio
import contextlib
import gc
import json
import threading

import httpx
from openapi_spec_validator import validate

from pagedserve.engine import AsyncLLMEngine, EngineConfig
from pagedserve.engine.outputs import RequestOutput
from pagedserve.server.app import build_app
from pagedserve.server.state import ServeSettings


@contextlib.asynccontextmanager
async def running(model: str, **settings):
    """(ServerState, client) for an app with started lifespan; request_exit is recorded."""
    engine = AsyncLLMEngine.from_config(EngineConfig(model=model, num_kv_blocks=128),
                                        in_process=True)
    app = build_app(ServeSettings(model=model, served_model_names=["stories260K"], **settings),
                    engine)
    state = app.state.server
    state.exited = asyncio.Event()
    state.request_exit = state.exited.set
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app",
                                     timeout=60) as client:
            yield state, client


def test_batching_and_missing_chat_template(stories_path):
    async def main():
        async with running(stories_path) as (state, client):
            r = await client.post("/v1/chat/completions",
                                  json={"messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]
            before = state.engine.stats().num_steps
            rs = await asyncio.gather(*[client.post("/v1/completions", json={
                "prompt": f"Story {i}:", "max_tokens": 16, "ignore_eos": True})
                for i in range(8)])
            assert [r.json()["usage"]["completion_tokens"] for r in rs] == [16] * 8
            assert state.engine.stats().num_steps - before < 8 * 16 / 2, "requests were not batched"
    asyncio.run(main())


def test_engine_death_fails_requests_and_health(stories_path):
    async def main():
        async with running(stories_path) as (state, client):
            assert (await client.get("/health")).status_code == 200
            core = state.engine.client.engine

            def broken_step():
                raise RuntimeError("a worker died")
            task = asyncio.create_task(client.post("/v1/completions", json={
                "prompt": "Hi", "max_tokens": 300, "ignore_eos": True}))
            while state.engine.stats().num_steps < 2:
                await asyncio.sleep(0.005)
            core.step = broken_step
            r = await task
            assert r.status_code == 500
            assert r.json()["error"]["code"] == "engine_dead"
            assert "a worker died" in r.json()["error"]["message"]
            assert (await client.get("/health")).status_code == 503
            assert (await client.post("/v1/completions", json={"prompt": "Hi"})).status_code == 500
            await asyncio.wait_for(state.exited.wait(), 30)
            assert state.exit_code == 1
    asyncio.run(main())


def test_drain_waits_for_in_flight_only_up_to_the_timeout(stories_path):
    async def main():
        async with running(stories_path, shutdown_timeout=0.3) as (state, client):
            core, gate = state.engine.client.engine, threading.Event()
            real_step = core.step
            core.step = lambda: gate.wait() and real_step()  # hold the request in flight
            task = asyncio.create_task(client.post("/v1/completions", json={
                "prompt": "Hi", "max_tokens": 5}))
            while state.in_flight < 1:
                await asyncio.sleep(0.005)
            await state.drain()  # returns at the timeout although a request is in flight
            assert state.exited.is_set() and state.in_flight == 1 and state.exit_code == 0
            assert (await client.get("/health")).status_code == 503
            refused = await client.post("/v1/completions", json={"prompt": "Hi"})
            assert refused.status_code == 503 and refused.headers["retry-after"]
            gate.set()
            assert (await task).status_code == 200
    asyncio.run(main())


def test_openapi_schema_is_valid():
    app = build_app(ServeSettings(model="m", served_model_names=["m"]))
    schema = json.loads(json.dumps(app.openapi()))
    validate(schema)
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics",
            "/version", "/tokenize", "/detokenize"} <= set(schema["paths"])
    completion = schema["components"]["schemas"]["CompletionRequest"]
    assert "prompt" in completion["required"]
    assert {"max_tokens", "stream", "stream_options", "logprobs", "echo", "ignore_eos",
            "min_tokens", "seed", "stop", "n"} <= set(completion["properties"])
    errors = schema["paths"]["/v1/completions"]["post"]["responses"]
    assert {"400", "401", "404", "500", "503"} <= set(errors)


def _lagging(engine, seen: list[RequestOutput], keep_up: int = 4):
    """engine.generate for a consumer that, after `keep_up` outputs, looks again only once
    the engine has nothing left to run: every delta in between waits in the request's queue."""
    real = engine.generate

    async def generate(prompt, params=None, request_id=None):
        gen = real(prompt, params, request_id)
        try:
            async for out in gen:
                seen.append(out)
                yield out
                if len(seen) == keep_up:
                    while (s := engine.stats()).num_running or s.num_waiting:
                        await asyncio.sleep(0.005)
        finally:
            await gen.aclose()
    return generate


def _joined(chunks: list[dict], index: int) -> dict:
    """One choice's stream pieces added up: texts, token ids and logprob lists."""
    mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
    lps = [c["logprobs"] for c in mine]
    return {"text": "".join(c["text"] for c in mine),
            "token_ids": [t for c in mine for t in c["token_ids"]],
            "finish_reason": mine[-1]["finish_reason"],
            "logprobs": {key: [v for lp in lps for v in lp[key]] for key in lps[0]}}


def test_a_lagging_stream_adds_up_to_the_answer(stories_path):
    """A server busy elsewhere reads a stream's outputs late: what piled up meanwhile comes
    as one merged delta, and the chunks still carry every piece of text, every token id and
    logprob. A long stop string that is never met holds the first tokens' text back: their
    deltas have tokens but no text, and those tokens go out with the next text."""
    body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "n": 2,
            "logprobs": 2, "stop": ["a stop string longer than a few tokens"],
            "ignore_eos": True, "return_token_ids": True}

    async def main():
        async with running(stories_path) as (state, client):
            whole = (await client.post("/v1/completions", json=body)).json()
            seen: list[RequestOutput] = []
            state.engine.generate = _lagging(state.engine, seen)
            r = await client.post("/v1/completions", json={
                **body, "stream": True, "stream_options": {"include_usage": True}})
            return whole, r.text, seen
    whole, text, seen = asyncio.run(main())
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    # the consumer did lag: one output brought many tokens of a sequence at once
    assert max(len(o.token_ids) for out in seen for o in out.outputs) > 1
    for choice in whole["choices"]:
        got = _joined(chunks, choice["index"])
        assert got == {key: choice[key] for key in got}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_loading_the_engine_freezes_the_startup_heap(stories_path):
    """`pagedserve serve`'s path (the app loads its engine) freezes what is alive then, so a
    full collection does not stall every stream for the ~120 ms of walking it; an app handed
    its engine (embedded, as in these tests) leaves the collector alone."""
    async def main():
        async with running(stories_path):
            assert gc.get_freeze_count() == 0
        app = build_app(ServeSettings(model=stories_path, served_model_names=["stories260K"],
                                      engine_in_process=True,
                                      engine_kwargs={"num_kv_blocks": 128}))
        state = app.state.server
        try:
            async with app.router.lifespan_context(app):
                while state.engine is None:
                    await asyncio.sleep(0.01)
                assert state.ready
                assert gc.get_freeze_count() > 0
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://app",
                                             timeout=60) as client:
                    r = await client.post("/v1/completions", json={"prompt": "Hi",
                                                                   "max_tokens": 4})
                    assert r.json()["usage"]["completion_tokens"] == 4
        finally:
            gc.unfreeze()
    asyncio.run(main())
