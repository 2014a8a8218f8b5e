"""Server vs offline throughput on one workload, in one run.

N concurrent completions go through `pagedserve serve` (OpenAI API over local HTTP, streamed
and not), then the same prompts go through `LLM.generate` in this process. Both use the same
engine flags; output tokens per second is what is compared.

    python benchmarks/serve_vs_offline.py [--num-requests 64] [--max-tokens 128] [--model M]
"""
import argparse
import asyncio
import json
import os
import resource
import time

import httpx

from pagedserve.benchmarks.servers import start_pagedserve
from pagedserve.engine.loader import default_model


def _cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of this process or of pid: steadier than wall time on a
    shared machine."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    with open(f"/proc/{pid}/stat") as f:  # Linux
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Processes pid started with multiprocessing spawn: a server's engine core (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if ppid == pid and b"spawn_main" in f.read():
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return found


async def _one(client: httpx.AsyncClient, body: dict) -> int:
    if not body.get("stream"):
        r = await client.post("/v1/completions", json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    return tokens


async def _serve_run(url: str, prompts: list[str], max_tokens: int,
                     stream: bool) -> tuple[int, float]:
    body = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": stream}
    if stream:  # refused without stream, as by vLLM
        body["stream_options"] = {"include_usage": True}
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await _one(client, {**body, "prompt": "warm up", "max_tokens": 4})
        start = time.perf_counter()
        tokens = await asyncio.gather(*[_one(client, {**body, "prompt": p}) for p in prompts])
        return sum(tokens), time.perf_counter() - start


def _offline(model: str | None, engine_kwargs: dict):
    from pagedserve import LLM, SamplingParams
    llm = LLM(model, **engine_kwargs)
    llm.generate(["warm up"], SamplingParams(max_tokens=4), use_tqdm=False)

    def run(prompts: list[str], max_tokens: int) -> tuple[int, float, float]:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
        start, cpu = time.perf_counter(), _cpu_seconds()
        outs = llm.generate(prompts, params, use_tqdm=False)
        return (sum(len(o.outputs[0].token_ids) for o in outs), time.perf_counter() - start,
                _cpu_seconds() - cpu)
    return run


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: the bundled stories260K")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--kv-cache-memory", default="256MiB")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternate server and offline runs this many times (a shared machine "
                        "is noisy: compare within a round)")
    p.add_argument("--server-args", default="",
                   help="extra `pagedserve serve` flags, e.g. --disable-frontend-multiprocessing")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads on both sides (default: torch's choice). On an "
                        "oversubscribed machine OpenMP spinning can slow the offline run, which "
                        "steps on the main thread, far more than the server, which steps on a "
                        "worker thread; 1 makes the two comparable there")
    return p.parse_args()


def main() -> None:
    args = _parse_args()
    threads_env = {}
    if args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)
        threads_env = {"OMP_NUM_THREADS": str(args.torch_threads)}
    prompts = [f"Story {i}: Once upon a time" for i in range(args.num_requests)]
    offline = _offline(args.model, {"kv_cache_memory": args.kv_cache_memory})
    server_args = ["--kv-cache-memory", args.kv_cache_memory, *args.server_args.split()]
    server = start_pagedserve(args.model or default_model(), server_args,
                              {**os.environ, **threads_env})
    proc, url = server.proc, server.url
    core = _children(proc.pid)  # the engine core process, if the engine is not in-process
    print(f"{args.num_requests} concurrent requests x {args.max_tokens} output tokens "
          f"(greedy, ignore_eos), model {args.model or 'stories260K (bundled)'}, "
          f"{os.cpu_count()} CPUs, torch threads {args.torch_threads or 'default'}; "
          "output tokens per second (CPU seconds spent by the server process"
          + (" + its engine core process" if core else "") + "):")
    try:
        for i in range(args.rounds):
            rates, cpu = {}, {}
            for stream in (False, True):
                name = "server stream" if stream else "server"
                before = [_cpu_seconds(pid) for pid in [proc.pid, *core]]
                tokens, secs = asyncio.run(_serve_run(url, prompts, args.max_tokens, stream))
                used = [_cpu_seconds(pid) - b for pid, b in zip([proc.pid, *core], before)]
                rates[name], cpu[name] = tokens / secs, " + ".join(f"{u:.1f}" for u in used)
            tokens, secs, offline_cpu = offline(prompts, args.max_tokens)
            rates["offline"], cpu["offline"] = tokens / secs, f"{offline_cpu:.1f}"
            print(f"  round {i + 1}: " + ", ".join(
                f"{k} {v:.0f} ({cpu[k]} CPU s)" for k, v in rates.items())
                + f"; server/offline {rates['server'] / rates['offline']:.2f}, "
                f"streamed/offline {rates['server stream'] / rates['offline']:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
