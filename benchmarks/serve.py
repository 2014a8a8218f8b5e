"""`pagedserve bench serve`: load a running server over the OpenAI completions API, streaming.

Requests go out at --request-rate (Poisson arrivals; inf = all at once) with at most
--max-concurrency in flight. Every streamed chunk is timestamped: TTFT is the first chunk,
ITL the gaps between chunks, TPOT (e2e - TTFT) / (tokens - 1) per request.
"""
import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field

from pagedserve.benchmarks.sse_client import SSEClient, StaleConnection
from pagedserve.benchmarks.stats import summarize, throughput, tpot
from pagedserve.benchmarks.workload import BenchRequest


@dataclass(slots=True)
class RequestResult:
    """What one request measured; times in seconds from the moment it was sent."""
    prompt_len: int
    output_len: int = 0  # tokens the server reported generating
    ttft: float | None = None
    e2e: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    error: str | None = None


def summarize_results(results: list[RequestResult], duration_s: float) -> dict:
    """Throughput over the run's wall time and latency percentiles (ms) of successes."""
    ok = [r for r in results if r.error is None]
    itl = [b - a for r in ok for a, b in zip(r.chunk_times, r.chunk_times[1:])]
    tpots = [t for r in ok if (t := tpot(r.e2e, r.ttft, r.output_len)) is not None]
    ms = lambda xs: {k: v * 1e3 for k, v in summarize(xs).items()}  # noqa: E731
    return {"completed": len(ok), "failed": len(results) - len(ok),
            **throughput(len(ok), sum(r.prompt_len for r in ok),
                         sum(r.output_len for r in ok), duration_s),
            "ttft_ms": ms([r.ttft for r in ok]), "tpot_ms": ms(tpots), "itl_ms": ms(itl),
            "e2e_ms": ms([r.e2e for r in ok]),
            "errors": sorted({r.error for r in results if r.error})[:5]}


async def _one(client: SSEClient, payload: bytes, req: BenchRequest) -> RequestResult:
    """One streamed request. A kept-alive connection the server closed while it sat idle
    fails before any answer; that request is sent once more on a fresh connection (nothing
    was generated for it), as a browser or the OpenAI client would."""
    res = await _attempt(client, payload, req)
    if res.error and res.error.startswith(STALE_CONNECTION) and not res.chunk_times:
        res = await _attempt(client, payload, req, fresh=True)
    return res


STALE_CONNECTION = StaleConnection.__name__


async def _attempt(client: SSEClient, payload: bytes, req: BenchRequest,
                   fresh: bool = False) -> RequestResult:
    res = RequestResult(req.prompt_len)
    start = time.perf_counter()

    def on_event(data: bytes) -> bool:
        if data.startswith(b"[DONE]"):
            return False
        return _read_chunk(res, json.loads(data), time.perf_counter() - start)
    try:
        status, body = await client.post("/v1/completions", payload, on_event, fresh)
    except Exception as e:  # a dropped connection counts as a failed request
        res.error = f"{type(e).__name__}: {e}"
        return res
    if status != 200:
        res.error = f"HTTP {status}: {body.decode(errors='replace')[:200]}"
    elif res.error is None:
        _finish(res, time.perf_counter() - start)
    return res


def _read_chunk(res: RequestResult, chunk: dict, now: float) -> bool:
    """Record one streamed chunk; True when it was an error (the request ends there)."""
    if "error" in chunk:
        res.error = str(chunk["error"].get("message"))
        return True
    if chunk.get("usage"):
        res.output_len = chunk["usage"]["completion_tokens"]
    if any(c.get("text") for c in chunk.get("choices", [])):
        res.chunk_times.append(now)
    return False


def _finish(res: RequestResult, e2e: float) -> None:
    res.e2e = e2e
    res.output_len = res.output_len or len(res.chunk_times)
    if not res.output_len:
        res.error = "no tokens streamed"
    else:  # tokens that decode to no text yet (partial UTF-8) show up with the next text
        res.ttft = res.chunk_times[0] if res.chunk_times else res.e2e


# --structured-outputs json: an array of strings, so a constrained answer runs as long as
# a free one would (the grammar never forces it to close)
JSON_WORKLOAD_FORMAT = {"type": "json_schema", "json_schema": {"name": "story", "schema": {
    "type": "object", "properties": {"lines": {"type": "array", "items": {"type": "string"}}},
    "required": ["lines"]}}}


async def run_load(base_url: str, model: str, requests: list[BenchRequest], request_rate: float,
                   max_concurrency: int | None, temperature: float = 1.0,
                   api_key: str | None = None, seed: int = 0,
                   extra: dict | None = None) -> tuple[list[RequestResult], float]:
    """Send every request (extra: more body fields), return their results and the run's
    wall time."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    gate = asyncio.Semaphore(max_concurrency or len(requests))
    rng = random.Random(seed)
    async with SSEClient(base_url, headers) as client:
        async def gated(req: BenchRequest) -> RequestResult:
            payload = json.dumps({
                "model": model, "prompt": req.prompt_token_ids, "max_tokens": req.output_len,
                "ignore_eos": True, "temperature": temperature, "stream": True,
                "stream_options": {"include_usage": True}, **(extra or {})}).encode()
            async with gate:
                return await _one(client, payload, req)

        tasks = []
        start = time.perf_counter()
        for req in requests:
            tasks.append(asyncio.create_task(gated(req)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        return list(results), time.perf_counter() - start


def served_model(base_url: str, api_key: str | None) -> str:
    import httpx
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30)
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


def _extra(args) -> dict | None:
    if getattr(args, "structured_outputs", "none") == "json":
        return {"response_format": JSON_WORKLOAD_FORMAT}
    return None


def main(args) -> int:
    from pagedserve.benchmarks import report
    from pagedserve.benchmarks.models import resolve_model
    from pagedserve.benchmarks.throughput import load_workload_for
    from pagedserve.engine.loader import default_model, resolve_model_path
    if args.request_rate <= 0:
        raise SystemExit("--request-rate must be positive (inf sends all at once)")
    if args.backend is not None:
        return _main_peers(args)
    if args.rounds is not None:
        raise SystemExit("--rounds needs --backend (a running server at --base-url is loaded "
                         "once)")
    args.base_url = args.base_url or "http://127.0.0.1:8000"
    try:
        SSEClient(args.base_url)  # refuses a URL it cannot load, before anything is sent
    except ValueError as e:
        raise SystemExit(f"error: --base-url: {e}") from None
    path = resolve_model_path(resolve_model(args.tokenizer) or default_model())
    requests = load_workload_for(args, path)
    model = args.model or served_model(args.base_url, args.api_key)
    results, duration = asyncio.run(run_load(args.base_url, model, requests, args.request_rate,
                                             args.max_concurrency, args.temperature,
                                             args.api_key, args.seed, _extra(args)))
    s = summarize_results(results, duration)
    print(f"{args.base_url} model {model}: {s['completed']} completed, {s['failed']} failed "
          f"in {duration:.1f} s; rate {args.request_rate}, max concurrency "
          f"{args.max_concurrency}; load {report.machine()['load_avg_1_5_15']}")
    print(f"request throughput {s['requests_per_s']:.2f} req/s, "
          f"output {s['output_tokens_per_s']:.1f} tok/s, total {s['total_tokens_per_s']:.1f} tok/s")
    report.print_table([{"metric": m.upper(), **s[f"{m}_ms"]}
                        for m in ("ttft", "tpot", "itl", "e2e")],
                       [("metric", "ms", "s"), ("mean", "mean", ".2f"),
                        ("median", "median", ".2f"), ("p99", "p99", ".2f")])
    for e in s["errors"]:
        print(f"error: {e}")
    report.write_json(args.output_json, "serve", args, s)
    return 1 if s["failed"] else 0


def _main_peers(args) -> int:
    """--backend: the servers are started here, so what names a running one is refused."""
    from pagedserve.benchmarks import serve_peers
    from pagedserve.benchmarks.models import resolve_model
    from pagedserve.benchmarks.throughput import load_workload_for
    from pagedserve.engine.loader import default_model, resolve_model_path
    given = [f for f, v in (("--base-url", args.base_url), ("--api-key", args.api_key),
                            ("--tokenizer", args.tokenizer)) if v]
    if args.structured_outputs != "none":
        given.append("--structured-outputs")
    if given:
        raise SystemExit(f"{', '.join(given)} cannot be combined with --backend (it starts "
                         "its own servers for --model)")
    serve_peers.parse_backends(args.backend, serve_peers.BACKENDS)  # before any work
    args.rounds = 3 if args.rounds is None else args.rounds
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be a positive integer, got {args.rounds}")
    path = resolve_model_path(resolve_model(args.model) or default_model())
    return serve_peers.main(args, path, [
        load_workload_for(argparse.Namespace(**{**vars(args), "seed": args.seed + i}), path)
        for i in range(args.rounds)])
